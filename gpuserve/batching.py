"""The batcher: bounded per-API queues feeding free executors.

Work-conserving: whenever an executor is free and work is queued, it takes up
to `max_batch_size` items at once; nothing waits on a timer while a device is
idle, so batches grow by themselves under load. Each request carries a
deadline whose timer lives here, on the event loop, apart from any executor;
one whose client left or whose deadline passed is dropped before batching and
never runs. `max_latency_ms` is kept by refusing, early, what a learned model
of execution time says cannot make it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from gpuserve.errors import GpuserveError
from gpuserve.executors.base import Executor, ExecutorDied
from gpuserve.executors.replica import BatchResult, Failure
from gpuserve.latency import LatencyModel
from gpuserve.pool import DevicePool
from gpuserve.service import ApiSpec
from gpuserve.stats import ApiStats, Stats

log = logging.getLogger(__name__)


class Refused(GpuserveError):
    """The request was not run. `status` is its HTTP status."""

    status = 503
    reason = "refused"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Refused):
    reason = "queue_full"


class LatencyBudgetExceeded(Refused):
    reason = "latency"


class ExecutorLost(Refused):
    reason = "executor_lost"


class ShuttingDown(Refused):
    reason = "shutting_down"


class DeadlineExceeded(Refused):
    status = 504
    reason = "deadline"


class ItemFailed(GpuserveError):
    """The user's code raised for this item (HTTP 500)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.type}: {failure.message}")
        self.failure = failure


# Where a pending item is. Its future may settle (deadline, client gone) at any
# time; these states let the queue count live items without searching it.
_QUEUED, _TAKEN, _DROPPED, _GONE = range(4)


class _Pending:
    __slots__ = ("kwargs", "future", "enqueued", "latency_deadline", "timer", "state", "probe")

    def __init__(self, kwargs: dict[str, Any], future: asyncio.Future[Any], now: float, budget_s: float) -> None:
        self.kwargs = kwargs
        self.future = future
        self.enqueued = now
        self.latency_deadline = now + budget_s
        self.timer: asyncio.TimerHandle | None = None
        self.state = _QUEUED
        self.probe = False  # admitted despite the latency model, to refresh its evidence


class _ApiQueue:
    __slots__ = ("api", "per_hop", "items", "limit", "dropped", "stats", "next_probe", "last_learned")

    def __init__(self, api: ApiSpec, limit: int, stats: ApiStats) -> None:
        self.api = api
        # Items handed to an executor at once. An API that is not batchable is
        # still called once per item, but a group of them shares one hop.
        self.per_hop = api.max_batch_size if api.batchable else UNBATCHED_PER_HOP
        self.items: deque[_Pending] = deque()
        self.limit = limit
        self.dropped = 0  # items still in `items` whose future settled while queued
        self.stats = stats
        self.next_probe = 0.0  # loop time after which a refused request may run as a probe
        self.last_learned = 0.0  # loop time the latency model last saw a batch of this API
        stats.queue_limit = limit

    @property
    def depth(self) -> int:
        return len(self.items) - self.dropped

    def pop(self) -> _Pending:
        item = self.items.popleft()
        if item.state == _DROPPED:
            self.dropped -= 1
        elif item.future.done():  # settled, its callback not run yet
            item.state = _GONE
        return item

    def compact(self) -> None:
        """Forget the dropped items (only when the queue looks full, so rarely)."""
        self.items = deque(item for item in self.items if item.state != _DROPPED)
        self.dropped = 0


UNBATCHED_PER_HOP = 16
PROBE_INTERVAL_S = 1.0  # at most one request per interval runs against a refusing latency model


def default_queue_size(api: ApiSpec, executors: int) -> int:
    """Room for a few rounds of full batches on every executor."""
    return max(4 * api.max_batch_size * executors, 64)


def _why(future: asyncio.Future[Any]) -> str | None:
    """Why a future settled on its own: the client left, or its deadline passed."""
    if future.cancelled():
        return "cancelled"
    if isinstance(future.exception(), DeadlineExceeded):
        return DeadlineExceeded.reason
    return None


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no answer within the {timeout:g} s deadline"))


class Batcher:
    def __init__(self, apis: Iterable[ApiSpec], pool: DevicePool, *, queue_size: int | None = None) -> None:
        self._pool = pool
        apis = list(apis)
        self.stats = Stats([api.name for api in apis])
        self._queues = {
            api.name: _ApiQueue(api, queue_size or default_queue_size(api, len(pool)), self.stats[api.name])
            for api in apis
        }
        self._models: dict[tuple[str, str], LatencyModel] = {}  # (api, executor) -> execution time
        self._fastest_cache: dict[tuple[str, int], float | None] = {}  # (api, size) -> seconds
        self._ceilings: dict[tuple[str, str], int] = {}  # lowered after out-of-memory
        self._busy: dict[str, float | None] = {}  # executor key -> predicted end of its batch
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    # -- the request side ----------------------------------------------------------
    def submit(self, api_name: str, kwargs: dict[str, Any], timeout: float | None = None) -> asyncio.Future[Any]:
        """Queue one item; the future resolves to its result or raises.

        Raises `QueueFull` or `LatencyBudgetExceeded` at once instead of queueing
        work that cannot be served in time. After `timeout` seconds the future
        raises `DeadlineExceeded`, wherever the item is; cancelling the future
        (the client left) drops the item if it has not started.
        """
        queue = self._queues[api_name]
        stats = queue.stats
        if not self.accepting:
            stats.refusals[ShuttingDown.reason] += 1
            raise ShuttingDown("the server is shutting down", retry_after=1)
        if len(queue.items) >= queue.limit and queue.dropped:
            queue.compact()
        if queue.depth >= queue.limit:
            stats.refusals[QueueFull.reason] += 1
            raise QueueFull(
                f"queue of {api_name!r} is full ({queue.limit} waiting)",
                retry_after=self._retry_after(queue),
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        budget = queue.api.max_latency_ms / 1000
        predicted = self._predict_wait(queue, now)
        probe = False
        if predicted is not None and predicted > budget:
            # Refused requests never run, so a model with no fresh evidence would
            # never learn that the device got faster: let one through now and then.
            interval = max(budget, PROBE_INTERVAL_S)
            probe = now - queue.last_learned >= interval and now >= queue.next_probe
            if probe:
                queue.next_probe = now + interval
        if predicted is not None and predicted > budget and not probe:
            stats.refusals[LatencyBudgetExceeded.reason] += 1
            raise LatencyBudgetExceeded(
                f"{api_name!r} cannot answer within max_latency_ms={queue.api.max_latency_ms:g}: "
                f"predicted {predicted * 1000:.0f} ms with {queue.depth} queued",
                retry_after=self._retry_after(queue),
            )
        future = loop.create_future()
        item = _Pending(kwargs, future, now, budget)
        item.probe = probe
        if timeout is not None:
            item.timer = loop.call_later(timeout, _expire, future, timeout)
        future.add_done_callback(functools.partial(self._settled, queue, item))
        queue.items.append(item)
        stats.queue_depth = queue.depth
        self._work.set()
        return future

    @staticmethod
    def _settled(queue: _ApiQueue, item: _Pending, future: asyncio.Future[Any]) -> None:
        if item.timer is not None:
            item.timer.cancel()
        why = _why(future)
        if item.state == _TAKEN:
            if why:
                queue.stats.outcomes[why] += 1
            return
        if why:
            queue.stats.refusals[why] += 1
        if item.state == _QUEUED:
            item.state = _DROPPED
            queue.dropped += 1
            queue.stats.queue_depth = queue.depth

    def _fastest(self, api: ApiSpec, size: int) -> float | None:
        """Predicted seconds for a batch of `size` on the fastest device with evidence."""
        key = (api.name, size)
        if key in self._fastest_cache:  # models change once per batch, not per request
            return self._fastest_cache[key]
        found = None
        for executor in self._pool.executors:
            model = self._models.get((api.name, executor.key))
            value = model.predict(size) if model else None
            if value is not None and (found is None or value < found):
                found = value
        self._fastest_cache[key] = found
        return found

    def _free_in(self, now: float) -> float:
        """Seconds until some executor is free (0 when one is, or when unknown)."""
        if len(self._busy) < len(self._pool):
            return 0.0
        return min(max(end - now, 0.0) if end is not None else 0.0 for end in self._busy.values())

    def _predict_wait(self, queue: _ApiQueue, now: float) -> float | None:
        """Wait for an executor, then for the full batches ahead, then this item's batch."""
        size = queue.per_hop
        ahead = queue.depth
        own = self._fastest(queue.api, min(ahead + 1, size))
        if own is None:
            return None
        rounds = ahead // size / len(self._pool)  # full batches ahead, shared by all executors
        full = self._fastest(queue.api, size) if rounds else 0.0
        return self._free_in(now) + rounds * (full or own) + own

    def _retry_after(self, queue: _ApiQueue) -> float:
        """Seconds until the queue has drained, by the latency model; at least 1."""
        full = self._fastest(queue.api, queue.per_hop)
        if full is None:
            return 1.0
        rounds = math.ceil(queue.depth / queue.per_hop / len(self._pool))
        return max(1.0, math.ceil(rounds * full))

    # -- the dispatch side -----------------------------------------------------------
    async def run(self) -> None:
        """Hand queued work to free executors until cancelled (then cancel what runs)."""
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wait_for_work()
                executor = await self._pool.acquire()  # after the wait: it is checked alive now
                queue = self._oldest()  # work may have left while every executor was busy
                batch = self._take(queue, executor) if queue is not None else []
                if queue is None or not batch:
                    self._pool.release(executor)
                    continue
                self._start(executor, queue, len(batch))
                # Plain tasks, held in a set: a task group's start_soon costs
                # tens of microseconds per batch on this path.
                task = asyncio.get_running_loop().create_task(self._execute(executor, queue, batch))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _wait_for_work(self) -> None:
        while self._oldest() is None:
            self._work.clear()
            await self._work.wait()

    def _oldest(self) -> _ApiQueue | None:
        """The queue whose oldest live item has waited longest."""
        best: _ApiQueue | None = None
        for queue in self._queues.values():
            items = queue.items
            while items and items[0].future.done():  # client gone or deadline passed
                queue.pop()
            if items and (best is None or items[0].enqueued < best.items[0].enqueued):
                best = queue
        return best

    def _take(self, queue: _ApiQueue, executor: Executor) -> list[_Pending]:
        api = queue.api
        key = (api.name, executor.key)
        ceiling = self._ceilings.get(key, queue.per_hop)
        if not api.batchable:  # calls in a group run one after another: share them out
            ceiling = min(ceiling, max(1, -(-queue.depth // len(self._pool))))
        model = self._models.get(key)
        now = asyncio.get_running_loop().time()
        stats = queue.stats
        if model is not None and queue.items:
            # Items share one budget, so the oldest has the earliest deadline: when
            # even a full batch finishes in time for it, no item needs its own check.
            largest = model.predict(min(ceiling, queue.depth))
            if largest is not None and now + largest <= queue.items[0].latency_deadline:
                model = None
        batch: list[_Pending] = []
        while queue.items and len(batch) < ceiling:
            item = queue.pop()
            if item.future.done():
                continue
            predicted = model.predict(len(batch) + 1) if model and not item.probe else None
            if predicted is not None and now + predicted > item.latency_deadline:
                item.state = _GONE
                stats.refusals[LatencyBudgetExceeded.reason] += 1
                item.future.set_exception(LatencyBudgetExceeded(
                    f"{api.name!r} could not start in time for max_latency_ms={api.max_latency_ms:g}: "
                    f"predicted {predicted * 1000:.0f} ms to run after {(now - item.enqueued) * 1000:.0f} ms queued",
                    retry_after=self._retry_after(queue),
                ))
                continue
            item.state = _TAKEN
            stats.queue_time.add(now - item.enqueued)
            batch.append(item)
        stats.queue_depth = queue.depth
        return batch

    def _start(self, executor: Executor, queue: _ApiQueue, size: int) -> None:
        model = self._models.get((queue.api.name, executor.key))
        predicted = model.predict(size) if model else None
        now = asyncio.get_running_loop().time()
        self._busy[executor.key] = now + predicted if predicted is not None else None
        self._idle.clear()
        queue.stats.batch_sizes[size] += 1
        queue.stats.in_flight[executor.key] += size

    def _finish(self, executor: Executor, queue: _ApiQueue, size: int) -> None:
        del self._busy[executor.key]
        if not self._busy:
            self._idle.set()
        queue.stats.in_flight[executor.key] -= size

    async def _execute(self, executor: Executor, queue: _ApiQueue, batch: list[_Pending]) -> None:
        stats = queue.stats
        try:
            result = await executor.run(queue.api.name, [item.kwargs for item in batch])
        except ExecutorDied as exc:
            self._finish(executor, queue, len(batch))
            log.error("%s; failing %d request(s) and restarting it", exc, len(batch))
            self._fail(batch, ExecutorLost(str(exc), retry_after=1), stats, ExecutorLost.reason)
            self._pool.replace(executor)
            return
        except Exception as exc:  # the executor itself failed, not the user's code
            self._finish(executor, queue, len(batch))
            log.exception("executor %s failed a batch", executor.key)
            self._fail(batch, ItemFailed(Failure.of(exc)), stats, "error")
            self._pool.release(executor)
            return
        except BaseException:  # cancelled: the server is stopping
            self._finish(executor, queue, len(batch))
            stopped = ShuttingDown("the server shut down while this ran", retry_after=1)
            self._fail(batch, stopped, stats, ShuttingDown.reason)
            raise
        self._finish(executor, queue, len(batch))
        self._pool.release(executor)
        self._learn(executor, queue, len(batch), result)
        for item, outcome in zip(batch, result.outcomes):
            if item.future.done():  # deadline passed or client left while it ran
                continue
            if isinstance(outcome, Failure):
                stats.outcomes["error"] += 1
                item.future.set_exception(ItemFailed(outcome))
            else:
                stats.outcomes["ok"] += 1
                item.future.set_result(outcome)

    def _learn(self, executor: Executor, queue: _ApiQueue, size: int, result: BatchResult) -> None:
        key = (queue.api.name, executor.key)
        queue.stats.exec_time[executor.key].add(result.exec_s)
        if result.oom_ceiling is None:
            self._models.setdefault(key, LatencyModel()).observe(size, result.exec_s)
            queue.last_learned = asyncio.get_running_loop().time()
            self._fastest_cache.clear()
            return
        # A split batch's time says little about either size: learn from the next ones.
        ceiling = min(self._ceilings.get(key, queue.per_hop), result.oom_ceiling)
        self._ceilings[key] = queue.stats.batch_ceiling[executor.key] = ceiling
        log.warning("%s ran out of memory in a batch of %d for %r; its batches are capped at %d",
                    executor.key, size, queue.api.name, ceiling)

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception, stats: ApiStats, outcome: str) -> None:
        for item in batch:
            if not item.future.done():
                stats.outcomes[outcome] += 1
                item.future.set_exception(exc)

    async def drain(self, timeout: float) -> None:
        """Stop taking requests; let queued and running work finish, up to `timeout`."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(q.depth for q in self._queues.values()) and self._idle.is_set():
                return
            await asyncio.sleep(0.01)
        for queue in self._queues.values():
            while queue.items:
                item = queue.pop()
                if not item.future.done():
                    item.state = _GONE
                    queue.stats.refusals[ShuttingDown.reason] += 1
                    item.future.set_exception(ShuttingDown("the server shut down before this ran", retry_after=1))
            queue.stats.queue_depth = 0
