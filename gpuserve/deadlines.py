"""Request deadlines on the event loop, kept with one timer.

A timer per request (`call_later`, then `cancel`, then a done callback to do
it) costs more than the rest of a request's trip through the batcher. Requests
that take the server's default timeout expire in the order they arrived, so
they wait in a FIFO; requests with a timeout of their own (the
`X-Request-Timeout` header) wait in a heap. One loop timer is armed for the
earliest deadline of the two; when it fires it expires what is due and arms
itself for the next. Settled requests are forgotten from the front as new ones
come, and in one sweep when too many settled ones pile up behind a live one.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

# The loop's timers have millisecond resolution: one may fire up to this much
# before its deadline, and what is due within it is expired in the same sweep.
RESOLUTION_S = 0.001
SWEEP_AT_LEAST = 1024  # held requests before a sweep for settled ones is worth it


class Expiring(Protocol):
    expires: float
    future: asyncio.Future[Any]


class Deadlines:
    def __init__(self, default_timeout: float | None, expire: Callable[[Any], None]) -> None:
        self.default_timeout = default_timeout
        self._expire = expire  # called with each item whose deadline passed while its future is pending
        self._fifo: deque[Expiring] = deque()  # default timeout: deadlines in arrival order
        self._heap: list[tuple[float, int, Expiring]] = []  # own timeouts
        self._order = itertools.count()  # breaks ties in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf
        self._sweep_above = SWEEP_AT_LEAST

    def track(self, item: Expiring, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        """Expire `item` at `item.expires`; `timeout` None means the default (FIFO)."""
        if timeout is None:
            fifo = self._fifo
            while fifo and fifo[0].future.done():
                fifo.popleft()
            fifo.append(item)
        else:
            heap = self._heap
            while heap and heap[0][2].future.done():
                heapq.heappop(heap)
            heapq.heappush(heap, (item.expires, next(self._order), item))
        if len(self._fifo) + len(self._heap) > self._sweep_above:
            self._sweep()
        if item.expires < self._armed_for:
            self._arm(loop, item.expires)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._armed_for = None, math.inf
        due = loop.time() + RESOLUTION_S
        fifo, heap = self._fifo, self._heap
        while fifo and (fifo[0].future.done() or fifo[0].expires <= due):
            item = fifo.popleft()
            if not item.future.done():
                self._expire(item)
        while heap and (heap[0][2].future.done() or heap[0][0] <= due):
            item = heapq.heappop(heap)[2]
            if not item.future.done():
                self._expire(item)
        earliest = min(fifo[0].expires if fifo else math.inf, heap[0][0] if heap else math.inf)
        if earliest < math.inf:
            self._arm(loop, earliest)

    def _sweep(self) -> None:
        """Forget settled requests held behind a live one; sweep again at twice the size left."""
        self._fifo = deque(item for item in self._fifo if not item.future.done())
        self._heap = [entry for entry in self._heap if not entry[2].future.done()]
        heapq.heapify(self._heap)
        self._sweep_above = max(SWEEP_AT_LEAST, 2 * (len(self._fifo) + len(self._heap)))

    def __len__(self) -> int:
        """Requests held, settled ones included until they are forgotten."""
        return len(self._fifo) + len(self._heap)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_for = None, math.inf
