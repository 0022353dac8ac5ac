"""The batcher: bounded per-API queues feeding free executors.

Work-conserving: whenever an executor is free and work is queued, it takes up
to `max_batch_size` items at once; nothing waits on a timer while a device is
idle, so batches grow by themselves under load. Each request carries a
deadline kept here, on the event loop, apart from any executor (see
`deadlines`); one whose client left or whose deadline passed is dropped before
batching and never runs. `max_latency_ms` is kept by refusing, early, what a
learned model of execution time says cannot make it.

Per request the batcher does a few comparisons, one deque append and, for the
result, one `set_result`: no timer, no done callback. What a done callback
would count (clients that left while queued) is counted when the item leaves
the queue, or when the queue is swept: before `stats` are read, and when it
looks full.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from gpuserve.deadlines import Deadlines
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


# Where a pending item is: waiting in its queue, taken into a batch, or
# expired while it waited (still in the queue until it is popped or swept).
_QUEUED, _TAKEN, _EXPIRED = range(3)


class _Pending:
    __slots__ = ("kwargs", "future", "queue", "enqueued", "latency_deadline", "expires", "timeout", "state", "probe")

    def __init__(self, kwargs: dict[str, Any], future: asyncio.Future[Any], queue: _ApiQueue, now: float) -> None:
        self.kwargs = kwargs
        self.future = future
        self.queue = queue
        self.enqueued = now
        self.latency_deadline = now + queue.budget_s
        self.expires = math.inf
        self.timeout = math.inf
        self.state = _QUEUED
        self.probe = False  # admitted despite the latency model, to refresh its evidence


class _ApiQueue:
    __slots__ = ("api", "per_hop", "budget_s", "items", "limit", "expired", "stats", "next_probe",
                 "last_learned", "admit_below", "swept")

    def __init__(self, api: ApiSpec, limit: int, stats: ApiStats) -> None:
        self.api = api
        # Items handed to an executor at once. An API that is not batchable is
        # still called once per item, but a group of them shares one hop (this
        # many until the latency model knows how long a call takes).
        self.per_hop = api.max_batch_size if api.batchable else UNBATCHED_PER_HOP
        self.budget_s = api.max_latency_ms / 1000
        self.items: deque[_Pending] = deque()
        self.limit = limit
        self.expired = 0  # items still in `items` that expired while queued
        self.stats = stats
        self.next_probe = 0.0  # loop time after which a refused request may run as a probe
        self.last_learned = 0.0  # loop time the latency model last saw a batch of this API
        # Below this depth a new item surely fits its latency budget: no prediction needed.
        self.admit_below = math.inf
        self.swept = -math.inf  # loop time of the last sweep forced by a full-looking queue
        stats.queue_limit = limit

    @property
    def depth(self) -> int:
        """Live items, and those whose client left but that are not popped or swept yet."""
        return len(self.items) - self.expired

    def pop(self) -> _Pending:
        item = self.items.popleft()
        if item.future.done():
            self.forget(item)
        return item

    def forget(self, item: _Pending) -> None:
        """Account for a settled item that just left the queue."""
        if item.state == _EXPIRED:
            self.expired -= 1
        else:  # the client left while it waited
            self.stats.refusals["cancelled"] += 1

    def sweep(self) -> None:
        """Forget every settled item: the depth is then exact."""
        live: deque[_Pending] = deque()
        for item in self.items:
            if item.future.done():
                self.forget(item)
            else:
                live.append(item)
        self.items = live
        self.stats.queue_depth = len(live)


UNBATCHED_PER_HOP = 16
# A group of unbatched calls answers together, so it holds its first answer
# back by the others' time: groups grow only as far as this allows.
GROUP_BUDGET_S = 0.002
UNBATCHED_MAX_PER_HOP = 64
PROBE_INTERVAL_S = 1.0  # at most one request per interval runs against a refusing latency model
FULL_SWEEP_INTERVAL_S = 0.01  # a queue that looks full is swept for clients that left at most this often


def default_queue_size(api: ApiSpec, executors: int) -> int:
    """Room for a few rounds of full batches on every executor."""
    return max(4 * api.max_batch_size * executors, 64)


def _expire(item: _Pending) -> None:
    """The item's deadline passed before it was answered (its future is pending)."""
    item.future.set_exception(DeadlineExceeded(f"no answer within the {item.timeout:g} s deadline"))
    queue = item.queue
    if item.state == _QUEUED:
        item.state = _EXPIRED
        queue.expired += 1
        queue.stats.refusals[DeadlineExceeded.reason] += 1
    else:  # running: the answer, when it comes, is dropped
        queue.stats.outcomes[DeadlineExceeded.reason] += 1


class Batcher:
    """`timeout` is the default deadline of every request, in seconds (None: none)."""

    def __init__(
        self, apis: Iterable[ApiSpec], pool: DevicePool, *, queue_size: int | None = None,
        timeout: float | None = None,
    ) -> None:
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
        self._groups: dict[tuple[str, str], int] = {}  # unbatched calls per hop, from the latency model
        self._busy: dict[str, float | None] = {}  # executor key -> predicted end of its batch
        self._deadlines = Deadlines(timeout, _expire)
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.accepting = True

    # -- the request side ----------------------------------------------------------
    def submit(self, api_name: str, kwargs: dict[str, Any], timeout: float | None = None) -> asyncio.Future[Any]:
        """Queue one item; the future resolves to its result or raises.

        Raises `QueueFull` or `LatencyBudgetExceeded` at once instead of queueing
        work that cannot be served in time. After `timeout` seconds (None: the
        batcher's default) the future raises `DeadlineExceeded`, wherever the
        item is; cancelling the future (the client left) drops the item if it
        has not started.
        """
        queue = self._queues[api_name]
        if not self.accepting:
            queue.stats.refusals[ShuttingDown.reason] += 1
            raise ShuttingDown("the server is shutting down", retry_after=1)
        loop = asyncio.get_running_loop()
        now = loop.time()
        depth = len(queue.items) - queue.expired
        if depth >= queue.limit and now - queue.swept >= FULL_SWEEP_INTERVAL_S:
            queue.swept = now  # clients that left still count until swept
            queue.sweep()
            depth = len(queue.items)
        if depth >= queue.limit:
            queue.stats.refusals[QueueFull.reason] += 1
            raise QueueFull(
                f"queue of {api_name!r} is full ({queue.limit} waiting)",
                retry_after=self._retry_after(queue),
            )
        probe = depth >= queue.admit_below and self._admit(queue, now)
        future = loop.create_future()
        item = _Pending(kwargs, future, queue, now)
        item.probe = probe
        deadline = self._deadlines.default_timeout if timeout is None else timeout
        if deadline is not None:
            item.timeout = deadline
            item.expires = now + deadline
            self._deadlines.track(item, loop, timeout)
        queue.items.append(item)
        self._work.set()
        return future

    def _admit(self, queue: _ApiQueue, now: float) -> bool:
        """Admit by the latency model, or raise; True when admitted only as a probe."""
        budget = queue.budget_s
        predicted = self._predict_wait(queue, now)
        if predicted is None or predicted <= budget:
            return False
        # Refused requests never run, so a model with no fresh evidence would
        # never learn that the device got faster: let one through now and then.
        interval = max(budget, PROBE_INTERVAL_S)
        if now - queue.last_learned >= interval and now >= queue.next_probe:
            queue.next_probe = now + interval
            return True
        queue.stats.refusals[LatencyBudgetExceeded.reason] += 1
        raise LatencyBudgetExceeded(
            f"{queue.api.name!r} cannot answer within max_latency_ms={queue.api.max_latency_ms:g}: "
            f"predicted {predicted * 1000:.0f} ms with {queue.depth} queued",
            retry_after=self._retry_after(queue),
        )

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
            self._deadlines.close()

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
        if api.batchable:
            ceiling = self._ceilings.get(key, queue.per_hop)
        else:  # calls in a group run one after another: share them out
            ceiling = min(self._groups.get(key, queue.per_hop), max(1, -(-queue.depth // len(self._pool))))
        model = self._models.get(key)
        now = asyncio.get_running_loop().time()
        stats = queue.stats
        items = queue.items
        if model is not None and items:
            # Items share one budget, so the oldest has the earliest deadline: when
            # even a full batch finishes in time for it, no item needs its own check.
            largest = model.predict(min(ceiling, queue.depth))
            if largest is not None and now + largest <= items[0].latency_deadline:
                model = None
        batch: list[_Pending] = []
        waited = 0.0
        popleft = items.popleft
        while items and len(batch) < ceiling:
            item = popleft()
            if item.future.done():
                queue.forget(item)
                continue
            predicted = model.predict(len(batch) + 1) if model is not None and not item.probe else None
            if predicted is not None and now + predicted > item.latency_deadline:
                stats.refusals[LatencyBudgetExceeded.reason] += 1
                item.future.set_exception(LatencyBudgetExceeded(
                    f"{api.name!r} could not start in time for max_latency_ms={api.max_latency_ms:g}: "
                    f"predicted {predicted * 1000:.0f} ms to run after {(now - item.enqueued) * 1000:.0f} ms queued",
                    retry_after=self._retry_after(queue),
                ))
                continue
            item.state = _TAKEN
            waited += now - item.enqueued
            batch.append(item)
        if batch:  # the first item is the oldest
            stats.queue_time.add_many(len(batch), waited, now - batch[0].enqueued)
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
        ok = failed = left = 0
        for item, outcome in zip(batch, result.outcomes):
            future = item.future
            if future.done():  # deadline passed (counted then) or client left while it ran
                left += future.cancelled()
            elif isinstance(outcome, Failure):
                failed += 1
                future.set_exception(ItemFailed(outcome))
            else:
                ok += 1
                future.set_result(outcome)
        outcomes = stats.outcomes
        outcomes["ok"] += ok
        if failed:
            outcomes["error"] += failed
        if left:
            outcomes["cancelled"] += left

    def _learn(self, executor: Executor, queue: _ApiQueue, size: int, result: BatchResult) -> None:
        key = (queue.api.name, executor.key)
        queue.stats.exec_time[executor.key].add(result.exec_s)
        if result.oom_ceiling is None:
            model = self._models.setdefault(key, LatencyModel())
            model.observe(size, result.exec_s)
            if not queue.api.batchable:
                self._groups[key] = model.largest_within(GROUP_BUDGET_S, UNBATCHED_MAX_PER_HOP) or queue.per_hop
            queue.last_learned = asyncio.get_running_loop().time()
            self._fastest_cache.clear()
            self._refresh_admission()
            return
        # A split batch's time says little about either size: learn from the next ones.
        ceiling = min(self._ceilings.get(key, queue.per_hop), result.oom_ceiling)
        self._ceilings[key] = queue.stats.batch_ceiling[executor.key] = ceiling
        log.warning("%s ran out of memory in a batch of %d for %r; its batches are capped at %d",
                    executor.key, size, queue.api.name, ceiling)

    def _refresh_admission(self) -> None:
        """Per queue, the depth below which `submit` admits without a prediction.

        Below it, even after the longest batch any executor may be running,
        the full batches ahead and a full batch of its own fit the budget.
        """
        longest = max(
            (model.predict(self._queues[api].per_hop) or 0.0 for (api, _), model in self._models.items()),
            default=0.0,
        )
        for queue in self._queues.values():
            full = self._fastest(queue.api, queue.per_hop)
            spare = queue.budget_s - longest - (full or 0.0)
            if spare < 0:
                queue.admit_below = 0
            elif not full or spare * len(self._pool) / full > queue.limit:
                queue.admit_below = math.inf
            else:
                rounds = math.floor(spare * len(self._pool) / full)  # full batches ahead that fit
                queue.admit_below = (rounds + 1) * queue.per_hop

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception, stats: ApiStats, outcome: str) -> None:
        for item in batch:
            if not item.future.done():
                stats.outcomes[outcome] += 1
                item.future.set_exception(exc)
            elif item.future.cancelled():
                stats.outcomes["cancelled"] += 1

    def read_stats(self) -> Stats:
        """The serving signals, with every queue's depth made exact first."""
        for queue in self._queues.values():
            queue.sweep()
        return self.stats

    async def drain(self, timeout: float) -> None:
        """Stop taking requests; let queued and running work finish, up to `timeout`."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for queue in self._queues.values():
                queue.sweep()
            if not any(q.items for q in self._queues.values()) and self._idle.is_set():
                return
            await asyncio.sleep(0.01)
        for queue in self._queues.values():
            while queue.items:
                item = queue.pop()
                if not item.future.done():
                    queue.stats.refusals[ShuttingDown.reason] += 1
                    item.future.set_exception(ShuttingDown("the server shut down before this ran", retry_after=1))
            queue.stats.queue_depth = 0
