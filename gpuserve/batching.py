"""The batcher: bounded per-API queues feeding free executors.

Work-conserving: whenever an executor is free and work is queued, it takes up
to `max_batch_size` items at once; nothing waits on a timer while a device is
idle, so batches grow by themselves under load. Requests carry deadlines;
one whose client left or whose deadline passed is dropped before batching.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio

from gpuserve.errors import GpuserveError
from gpuserve.executors.base import Executor, ExecutorDied
from gpuserve.executors.replica import Failure
from gpuserve.latency import LatencyModel
from gpuserve.pool import DevicePool
from gpuserve.service import ApiSpec
from gpuserve.stats import Stats

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


class _Pending:
    __slots__ = ("kwargs", "future", "enqueued", "latency_deadline")

    def __init__(self, kwargs: dict[str, Any], future: asyncio.Future[Any], now: float, budget_s: float) -> None:
        self.kwargs = kwargs
        self.future = future
        self.enqueued = now
        self.latency_deadline = now + budget_s


class _ApiQueue:
    __slots__ = ("api", "items", "limit")

    def __init__(self, api: ApiSpec, limit: int) -> None:
        self.api = api
        self.items: deque[_Pending] = deque()
        self.limit = limit


def default_queue_size(api: ApiSpec, executors: int) -> int:
    """Room for a few rounds of full batches on every executor."""
    return max(4 * api.max_batch_size * executors, 64)


class Batcher:
    def __init__(self, apis: Iterable[ApiSpec], pool: DevicePool, *, queue_size: int | None = None) -> None:
        self._pool = pool
        self._queues = {
            api.name: _ApiQueue(api, queue_size or default_queue_size(api, len(pool))) for api in apis
        }
        self.stats = Stats(list(self._queues))
        self._models: dict[tuple[str, str], LatencyModel] = {}
        self._ceilings: dict[tuple[str, str], int] = {}  # lowered after out-of-memory
        self._work = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    # -- the request side ----------------------------------------------------------
    def submit(self, api_name: str, kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue one item; the future resolves to its result or raises.

        Raises `QueueFull` or `LatencyBudgetExceeded` at once instead of queueing
        work that cannot be served in time.
        """
        queue = self._queues[api_name]
        stats = self.stats[api_name]
        if not self.accepting:
            stats.refusals[ShuttingDown.reason] += 1
            raise ShuttingDown("the server is shutting down", retry_after=1)
        if len(queue.items) >= queue.limit:
            stats.refusals[QueueFull.reason] += 1
            raise QueueFull(
                f"queue of {api_name!r} is full ({queue.limit} waiting)",
                retry_after=self._retry_after(queue),
            )
        budget = queue.api.max_latency_ms / 1000
        predicted = self._predict_wait(queue)
        if predicted is not None and predicted > budget:
            stats.refusals[LatencyBudgetExceeded.reason] += 1
            raise LatencyBudgetExceeded(
                f"{api_name!r} cannot answer within max_latency_ms={queue.api.max_latency_ms:g}: "
                f"predicted {predicted * 1000:.1f} ms with {len(queue.items)} queued",
                retry_after=self._retry_after(queue),
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        queue.items.append(_Pending(kwargs, future, loop.time(), budget))
        stats.queue_depth = len(queue.items)
        self._work.set()
        return future

    def _predictions(self, api: ApiSpec, size: int) -> list[float]:
        found = []
        for executor in self._pool.executors:
            model = self._models.get((api.name, executor.key))
            value = model.predict(size) if model else None
            if value is not None:
                found.append(value)
        return found

    def _predict_wait(self, queue: _ApiQueue) -> float | None:
        """Queue wait plus execution for a newcomer, from the fastest device's model."""
        size = queue.api.max_batch_size
        ahead = len(queue.items)
        predictions = self._predictions(queue.api, min(ahead + 1, size))
        if not predictions:
            return None
        rounds = ahead // size / len(self._pool)  # full batches ahead, shared by all executors
        full = self._predictions(queue.api, size)
        return min(predictions) + rounds * (min(full) if full else min(predictions))

    def _retry_after(self, queue: _ApiQueue) -> float:
        full = self._predictions(queue.api, queue.api.max_batch_size)
        rounds = math.ceil(len(queue.items) / queue.api.max_batch_size / len(self._pool))
        return max(1.0, math.ceil(rounds * min(full))) if full else 1.0

    # -- the dispatch side -----------------------------------------------------------
    async def run(self) -> None:
        """Hand queued work to free executors until cancelled."""
        async with anyio.create_task_group() as tg:
            while True:
                executor = await self._pool.acquire()
                queue = await self._next_queue()
                batch = self._take(queue, executor)
                if not batch:
                    self._pool.release(executor)
                    continue
                self._in_flight += 1
                self._idle.clear()
                tg.start_soon(self._execute, executor, queue.api, batch)

    async def _next_queue(self) -> _ApiQueue:
        while True:
            best: _ApiQueue | None = None
            for queue in self._queues.values():
                items = queue.items
                while items and items[0].future.done():  # client gone or deadline passed
                    items.popleft()
                if items and (best is None or items[0].enqueued < best.items[0].enqueued):
                    best = queue
            if best is not None:
                return best
            self._work.clear()
            await self._work.wait()

    def _take(self, queue: _ApiQueue, executor: Executor) -> list[_Pending]:
        api = queue.api
        key = (api.name, executor.key)
        ceiling = min(api.max_batch_size, self._ceilings.get(key, api.max_batch_size))
        model = self._models.get(key)
        now = asyncio.get_running_loop().time()
        stats = self.stats[api.name]
        batch: list[_Pending] = []
        while queue.items and len(batch) < ceiling:
            item = queue.items.popleft()
            if item.future.done():
                continue
            predicted = model.predict(len(batch) + 1) if model else None
            if predicted is not None and now + predicted > item.latency_deadline:
                stats.refusals[LatencyBudgetExceeded.reason] += 1
                item.future.set_exception(LatencyBudgetExceeded(
                    f"{api.name!r} could not start in time for max_latency_ms={api.max_latency_ms:g}",
                    retry_after=1,
                ))
                continue
            stats.queue_time.add(now - item.enqueued)
            batch.append(item)
        stats.queue_depth = len(queue.items)
        return batch

    async def _execute(self, executor: Executor, api: ApiSpec, batch: list[_Pending]) -> None:
        stats = self.stats[api.name]
        stats.batch_sizes[len(batch)] += 1
        stats.in_flight[executor.key] += len(batch)
        try:
            result = await executor.run(api.name, [item.kwargs for item in batch])
        except ExecutorDied as exc:
            log.error("%s; failing %d request(s) and restarting it", exc, len(batch))
            self._fail(batch, ExecutorLost(str(exc), retry_after=1), stats)
            asyncio.get_running_loop().create_task(self._pool.restart(executor))
            return
        except Exception as exc:  # the executor itself failed, not the user's code
            log.exception("executor %s failed a batch", executor.key)
            self._fail(batch, ItemFailed(Failure.of(exc)), stats)
            self._pool.release(executor)
            return
        except BaseException:  # cancelled: the server is stopping
            self._fail(batch, ShuttingDown("the server shut down while this ran"), stats)
            raise
        finally:
            stats.in_flight[executor.key] -= len(batch)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        self._pool.release(executor)
        key = (api.name, executor.key)
        self._models.setdefault(key, LatencyModel()).observe(len(batch), result.exec_s)
        stats.exec_time[executor.key].add(result.exec_s)
        if result.oom_ceiling is not None:
            lowered = max(1, result.oom_ceiling // 2)
            self._ceilings[key] = min(self._ceilings.get(key, lowered), lowered)
            log.warning("%s ran out of memory at batch size %d; batches capped at %d",
                        executor.key, result.oom_ceiling, self._ceilings[key])
        for item, outcome in zip(batch, result.outcomes):
            if item.future.done():
                continue
            if isinstance(outcome, Failure):
                stats.completed["error"] += 1
                item.future.set_exception(ItemFailed(outcome))
            else:
                stats.completed["ok"] += 1
                item.future.set_result(outcome)

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception, stats: Any) -> None:
        for item in batch:
            if not item.future.done():
                stats.completed["error"] += 1
                item.future.set_exception(exc)

    async def drain(self, timeout: float) -> None:
        """Stop taking requests; let queued and running work finish, up to `timeout`."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(q.items for q in self._queues.values()) and self._idle.is_set():
                return
            await asyncio.sleep(0.01)
        for queue in self._queues.values():
            self._fail(list(queue.items), ShuttingDown("the server shut down before this ran"), self.stats[queue.api.name])
            queue.items.clear()
