"""A heartbeat on the event loop: how long it went without a break.

A timer fires every `INTERVAL_S` and notes how late it is. Lateness alone
would also count the time the process waited for a CPU on a busy machine, so
a stall is the part of it the process itself spent running (its CPU time
over the gap): work on the loop, or another of its threads holding the
interpreter lock. A neighbour's burst is not blamed on the server; a replica
thread computing without the lock while the loop waits for a CPU can be.

Stalls are counted in buckets (for `/metrics`), the longest is kept, and
one of `WARN_S` or more is logged (at most one line per `WARN_EVERY_S`).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time

log = logging.getLogger("gpuserve")

INTERVAL_S = 0.01
BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WARN_S = 0.5
WARN_EVERY_S = 10.0


class LoopWatch:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)  # stalls per bucket (the last: longer than every bound)
        self.total_s = 0.0
        self.longest_s = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._cpu = 0.0
        self._warned = -WARN_EVERY_S
        self._unwarned = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._expected = loop.time() + INTERVAL_S
        self._cpu = time.process_time()
        self._handle = loop.call_at(self._expected, self._beat, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        now, cpu = loop.time(), time.process_time()
        stall = max(0.0, min(now - self._expected, cpu - self._cpu))
        self.counts[bisect.bisect_left(BUCKETS_S, stall)] += 1
        self.total_s += stall
        if stall > self.longest_s:
            self.longest_s = stall
        if stall >= WARN_S:
            self._warn(now, stall)
        self._expected, self._cpu = now + INTERVAL_S, cpu
        self._handle = loop.call_at(self._expected, self._beat, loop)

    def _warn(self, now: float, stall: float) -> None:
        self._unwarned += 1
        if now - self._warned < WARN_EVERY_S:
            return
        log.warning("the event loop was blocked for %.0f ms (%d such stall(s) since the last warning): work "
                    "that holds the interpreter lock ran on it or beside it", stall * 1000, self._unwarned)
        self._warned, self._unwarned = now, 0

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, as a Prometheus histogram wants them."""
        cumulative, running = [], 0
        for bound, count in zip((*map(str, BUCKETS_S), "+Inf"), self.counts):
            running += count
            cumulative.append((bound, running))
        return cumulative
