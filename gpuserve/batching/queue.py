"""The queue of pending requests of one API, and the requests in it.

A request is answered through its future. Requests whose client left or whose
deadline passed stay in the deque until they are popped from its front or the
queue is swept, so the depth is kept as `len(items) - expired` and made exact
by a sweep when it matters (a queue that looks full, a stats read, more
expired items than the queue's limit).

A request that is settled lets go at once of what it carried: its arguments
and its future (which holds its answer, or the exception that holds the
handler's frame). What may still hold it for a while (the deadline timer's
FIFO behind an older live request, the deque behind a live item) then holds a
shell of a few hundred bytes, so memory stays bounded by the queue, however
long the oldest live request takes.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from gpuserve.batching.refusals import Reason
from gpuserve.outcomes import Encoder
from gpuserve.service import ApiSpec
from gpuserve.stats import ApiStats

if TYPE_CHECKING:
    from gpuserve.batching.admission import ApiAdmission
    from gpuserve.batching.quarantine import Quarantine
    from gpuserve.batching.rerun import Rerun

# Where a pending request is: waiting in its queue, taken into a batch, or
# expired while it waited (still in the queue until it is popped or swept).
QUEUED, TAKEN, EXPIRED = range(3)
FULL_SWEEP_INTERVAL_S = 0.01  # a queue that looks full is swept for clients that left at most this often


class _Answered:
    """What a settled request keeps in place of its future: done, never cancelled, holding nothing."""

    __slots__ = ()

    @staticmethod
    def done() -> bool:
        return True

    @staticmethod
    def cancelled() -> bool:
        return False


ANSWERED: Any = _Answered()


def default_queue_size(api: ApiSpec, executors: int) -> int:
    """Room for a few rounds of full batches on every executor."""
    return max(4 * api.max_batch_size * executors, 64)


class Pending:
    __slots__ = ("kwargs", "rows", "encoder", "future", "queue", "enqueued", "latency_deadline", "expires",
                 "timeout", "state", "probe", "request_id", "rerun")

    def __init__(self, kwargs: dict[str, Any], rows: int, encoder: Encoder, future: asyncio.Future[Any],
                 queue: ApiQueue, now: float, probe: bool, request_id: str | None = None) -> None:
        self.kwargs = kwargs
        self.rows = rows  # a batchable API's request may carry several; batches are filled by rows
        self.encoder = encoder
        self.future = future
        self.queue = queue
        self.enqueued = now
        self.latency_deadline = now + queue.policy.budget_s
        self.expires = math.inf
        self.timeout = math.inf
        self.state = QUEUED
        self.probe = probe  # admitted despite the latency model, to refresh its evidence
        self.request_id = request_id  # the protocol's id of the request, for logs
        self.rerun: Rerun | None = None  # set when it runs again alone after its batch failed or was lost

    def release(self) -> None:
        """Let go of the arguments and the answer of a settled request (its handler holds the future)."""
        self.kwargs = None  # type: ignore[assignment]
        self.future = ANSWERED


class ApiQueue:
    __slots__ = ("api", "policy", "items", "limit", "expired", "stats", "swept", "call_limit", "quarantine")

    def __init__(self, api: ApiSpec, limit: int, stats: ApiStats, policy: ApiAdmission) -> None:
        self.api = api
        self.policy = policy  # its admission state, beside it so that a request finds it in one step
        self.items: deque[Pending] = deque()
        self.limit = limit
        self.expired = 0  # items still in `items` that expired while queued
        self.stats = stats
        self.swept = -math.inf  # loop time of the last sweep forced by a full-looking queue
        self.call_limit: float | None = None  # seconds a call may run before the watchdog steps in
        self.quarantine: Quarantine | None = None  # inputs that crashed replicas; made at the first crash
        stats.queue_limit = limit

    @property
    def depth(self) -> int:
        """Live items, and those whose client left but that are not popped or swept yet."""
        return len(self.items) - self.expired

    def pop(self) -> Pending:
        item = self.items.popleft()
        if item.future.done():
            self.forget(item)
        return item

    def forget(self, item: Pending) -> None:
        """Account for a settled item that just left the queue."""
        if item.state == EXPIRED:
            self.expired -= 1
        else:  # the client left while it waited
            self.stats.refusals[Reason.CANCELLED.value] += 1
            item.release()

    def sweep(self) -> None:
        """Forget every settled item: the depth is then exact."""
        live: deque[Pending] = deque()
        for item in self.items:
            if item.future.done():
                self.forget(item)
            else:
                live.append(item)
        self.items = live
        self.stats.queue_depth = len(live)

    def checked_depth(self, now: float) -> int:
        """The depth a new request is measured against, swept first when the queue looks full."""
        depth = len(self.items) - self.expired
        if depth >= self.limit and now - self.swept >= FULL_SWEEP_INTERVAL_S:
            self.swept = now  # clients that left still count until swept
            self.sweep()
            depth = len(self.items)
        return depth
