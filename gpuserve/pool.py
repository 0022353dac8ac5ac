"""The per-device executor pool: free executors, handed out as leases.

The batcher asks the pool for a lease when it has work, and only then: a
batch never waits on a busy device while another is idle. A lease is one
executor for one batch at a time:

- `run(api, items, encoders)` runs a batch on it (raises `ExecutorDied` when
  the executor was lost while running it); `cancel(index)` tells it that a
  request of that batch is gone, so an async call for it stops;
- `stream(api, items, encoders, sink)` runs a batch of a streaming API, each
  step to `sink` as it is yielded (`executors/streaming.py`);
- `release()` gives it back once the batch is answered;
- `replace()` gives it back to be rebuilt instead (its executor was lost):
  it rejoins the free ones when the rebuild is done, while the others serve.

The batcher depends on this module only; what an executor is (a thread, a
process, something remote) is the executor's business.
"""

from __future__ import annotations

import asyncio
import logging
import traceback

from gpuserve.errors import GpuserveError
from gpuserve.executors.base import Executor, ExecutorDied, StreamLink, StreamSink

__all__ = ["DevicePool", "ExecutorDied", "Lease", "ReplicaBuildError", "StreamLink", "StreamSink"]

log = logging.getLogger(__name__)
RESTART_DELAY_S = 0.1  # the first wait after a failed restart; it doubles each time
MAX_RESTART_DELAY_S = 10.0


class ReplicaBuildError(GpuserveError):
    """A replica's constructor (the user's `__init__`) or its device failed."""


class Lease:
    """One executor, lent for one batch at a time. `key` names it in stats and logs."""

    __slots__ = ("_pool", "executor", "key", "run", "stream", "cancel")

    def __init__(self, pool: "DevicePool", executor: Executor) -> None:
        self._pool = pool
        self.executor = executor
        self.key = executor.key
        # The executor's own bound method: no extra frame per batch. Its
        # executor object is restarted in place, so the method stays valid.
        self.run = executor.run
        self.stream = executor.stream
        self.cancel = executor.cancel  # request `index` of the running batch is gone

    def release(self) -> None:
        self._pool._idle.put_nowait(self)

    def replace(self) -> None:
        self._pool._replace(self)


class DevicePool:
    def __init__(self, executors: list[Executor]) -> None:
        if not executors:
            raise ValueError("a pool needs at least one executor")
        self._leases = [Lease(self, executor) for executor in executors]
        self._idle: asyncio.Queue[Lease] = asyncio.Queue()
        self._replacing: set[asyncio.Task[None]] = set()  # strong references while they run
        self._lost: set[str] = set()  # keys of the executors those tasks rebuild
        self.ready = False

    def __len__(self) -> int:
        return len(self._leases)

    @property
    def keys(self) -> list[str]:
        """Every executor's key, in the order they were given."""
        return [lease.key for lease in self._leases]

    @property
    def executors(self) -> list[Executor]:
        return [lease.executor for lease in self._leases]

    async def start(self) -> None:
        """Build every replica (concurrently); ready once all are built."""
        results = await asyncio.gather(*(lease.executor.start() for lease in self._leases), return_exceptions=True)
        failures = [(lease, r) for lease, r in zip(self._leases, results) if isinstance(r, BaseException)]
        for lease, error in failures:
            # A worker process sends its traceback as text; a thread's is the exception's own.
            text = getattr(error, "traceback", "") or "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
            log.error("replica %s failed to build:\n%s", lease.key, text.rstrip())
        if failures:
            lease, error = failures[0]
            raise ReplicaBuildError(
                f"replica {lease.key} failed to build: {type(error).__name__}: {error}"
                + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            ) from error
        for lease in self._leases:
            self._idle.put_nowait(lease)
        self.ready = True

    async def acquire(self) -> Lease:
        """The next free executor's lease; one found dead while idle is replaced, not handed out."""
        while True:
            lease = await self._idle.get()
            if lease.executor.alive:
                return lease
            log.error("executor %s died while idle", lease.key)
            self._replace(lease)

    def _replace(self, lease: Lease) -> None:
        """Restart a lost executor in the background; its lease is free again when it is built."""
        task = asyncio.get_running_loop().create_task(self._restart(lease), name=f"gpuserve-restart-{lease.key}")
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    @property
    def replacing(self) -> list[str]:
        """The keys of executors being rebuilt now (they take no work until they are)."""
        return sorted(self._lost)

    async def _restart(self, lease: Lease) -> None:
        delay = RESTART_DELAY_S
        self._lost.add(lease.key)
        try:
            while True:
                try:
                    await lease.executor.restart()
                except Exception as exc:
                    log.error("restarting executor %s failed: %s; retrying in %.1fs", lease.key, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RESTART_DELAY_S)
                    continue
                log.warning("executor %s restarted", lease.key)
                lease.release()
                return
        finally:
            self._lost.discard(lease.key)

    async def stop(self, grace_s: float) -> bool:
        """Stop every executor, giving code still running about `grace_s`; False if some could not be ended."""
        self.ready = False
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        executors = self.executors
        results = await asyncio.gather(*(e.stop(grace_s) for e in executors), return_exceptions=True)
        for executor, result in zip(executors, results):
            if isinstance(result, BaseException):
                log.error("stopping %s failed: %s: %s", executor.key, type(result).__name__, result)
        return all(result is True for result in results)
