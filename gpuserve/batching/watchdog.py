"""The watchdog: a call that runs past its API's limit is stuck, and its replica is replaced.

Each API has a call limit (`@api(call_timeout=...)`, else `--call-timeout`,
else the server's request deadline `--timeout`). The dispatcher tells the
watchdog when a batch starts and ends on a lease (a dictionary write each);
one task looks at the running batches every `period` seconds (a tenth of the
smallest limit, at most 1 s), so a stuck call is found within its limit plus
one period. The watchdog logs it with the API, the replica and the request
ids, and gives up on it (`Lease.abandon`): the lease's `run` then raises
`ExecutorStuck`, the dispatcher fails the call's requests (`call_timeout`)
and has the replica rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from gpuserve.batching.queue import ApiQueue, Pending
from gpuserve.pool import Lease

log = logging.getLogger("gpuserve.batching")

MAX_PERIOD_S = 1.0
MIN_PERIOD_S = 0.01


class Watchdog:
    def __init__(self, limits: Iterable[float]) -> None:
        smallest = min(limits, default=None)
        # None: no API has a limit, nothing to watch.
        self.period = None if smallest is None else min(MAX_PERIOD_S, max(MIN_PERIOD_S, smallest / 10))
        self._running: dict[Lease, tuple[float, ApiQueue, list[Pending]]] = {}  # lease -> (due, queue, batch)

    def started(self, lease: Lease, queue: ApiQueue, batch: list[Pending], now: float) -> None:
        limit = queue.call_limit
        if limit is not None:
            self._running[lease] = (now + limit, queue, batch)

    def finished(self, lease: Lease) -> None:
        self._running.pop(lease, None)

    async def run(self) -> None:
        """Look for stuck calls until cancelled."""
        if self.period is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            for lease, (due, queue, batch) in list(self._running.items()):
                if now >= due:
                    del self._running[lease]
                    self._stuck(lease, queue, batch, now - due)

    @staticmethod
    def _stuck(lease: Lease, queue: ApiQueue, batch: list[Pending], over_s: float) -> None:
        if not lease.abandon():  # it ended just now; its answer is on its way
            return
        limit = queue.call_limit
        assert limit is not None
        ids = ", ".join(str(item.request_id) for item in batch)
        log.error("replica %s is stuck: a call of %r has run for %.1f s, past its limit of %g s "
                  "(call_timeout); failing its request(s) %s and replacing the replica",
                  lease.key, queue.api.name, limit + over_s, limit, ids)
