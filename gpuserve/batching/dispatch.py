"""Dispatch: hand queued work to free executors, one batch per lease, and settle what comes back.

Work-conserving: whenever an executor is free and work is queued, it takes up
to a batch at once; nothing waits on a timer while a device is idle, so
batches grow by themselves under load. Requests whose client left or whose
deadline passed are dropped before batching and never run. A batch of a
streaming API runs through `lease.stream` into a `StreamBatch` (`streams.py`)
and holds its executor until its last stream is over; nothing is learned from
it (a stream's length says nothing about a call's cost).

What comes back: results are settled; a batch that failed as a whole, or
whose replica died, has its requests run again alone (`rerun.py`), first in
their queue (not a stream's: its values were sent); a call the watchdog gave
up on (`watchdog.py`) fails its requests; a lost or stuck replica is rebuilt
by the pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from typing import Any

from gpuserve.batching import rerun
from gpuserve.batching.admission import Admission
from gpuserve.batching.queue import TAKEN, ApiQueue, Pending
from gpuserve.batching.refusals import ItemFailed, Reason, Refused
from gpuserve.batching.settle import ERROR, fail, settle
from gpuserve.batching.streams import StreamBatch, StreamLimits
from gpuserve.batching.watchdog import Watchdog
from gpuserve.outcomes import BatchResult, Failure
from gpuserve.pool import DevicePool, ExecutorDied, ExecutorStuck, Lease
from gpuserve.stats import ApiStats

log = logging.getLogger("gpuserve.batching")


class Dispatcher:
    def __init__(self, queues: Iterable[ApiQueue], pool: DevicePool, admission: Admission,
                 stream_limits: StreamLimits) -> None:
        self._queues = list(queues)
        self._pool = pool
        self._admission = admission
        self.watchdog = Watchdog(q.call_limit for q in self._queues if q.call_limit is not None)
        self._stream_limits = stream_limits
        self._work = asyncio.Event()  # set when a request is queued
        self.wake = self._work.set  # (bound once: it is called for every request)
        self.progress = asyncio.Event()  # set when a batch finishes
        self._running: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> bool:
        return not self._admission.busy

    async def run(self) -> None:
        """Hand queued work to free executors until cancelled (then cancel what runs)."""
        running = self._running
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wait_for_work()
                lease = await self._pool.acquire()  # after the wait: it is checked alive now
                queue = self._oldest()  # work may have left while every executor was busy
                batch, rows = self._take(queue, lease, loop.time()) if queue is not None else ([], 0)
                if queue is None or not batch:
                    lease.release()
                    continue
                lane = queue.policy.lanes[lease.key]
                self._admission.start(lane, rows, loop.time())
                stats = queue.stats
                stats.batch_sizes[rows] += 1
                stats.batch_requests[len(batch)] += 1
                stats.in_flight[lease.key] += len(batch)
                self.watchdog.started(lease, queue, batch, loop.time())
                # Plain tasks, held in a set: a task group's start_soon costs
                # tens of microseconds per batch on this path.
                task = loop.create_task(self._execute(lease, queue, batch, rows, loop))
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

    def _oldest(self) -> ApiQueue | None:
        """The queue whose oldest live item has waited longest."""
        best: ApiQueue | None = None
        for queue in self._queues:
            items = queue.items
            while items and items[0].future.done():  # client gone or deadline passed
                queue.pop()
            if items and (best is None or items[0].enqueued < best.items[0].enqueued):
                best = queue
        return best

    def _take(self, queue: ApiQueue, lease: Lease, now: float) -> tuple[list[Pending], int]:
        """Up to a batch of rows from `queue` for `lease`, and how many rows it holds."""
        policy = queue.policy
        lane = policy.lanes[lease.key]
        admission = self._admission
        ceiling = admission.ceiling(policy, lane, queue.depth)
        predict = lane.predict
        stats = queue.stats
        items = queue.items
        # Items share one budget, so the oldest has the earliest deadline: when
        # even a full batch finishes in time for it (or nothing is known yet),
        # no item needs its own check.
        size = min(ceiling, max(1, int(queue.depth * policy.rows_per_request)))
        largest = predict(size) if items else None
        check = largest is not None and now + largest > items[0].latency_deadline
        batch: list[Pending] = []
        rows = 0
        waited = 0.0
        popleft = items.popleft
        while items and rows < ceiling:
            item = items[0]
            if item.future.done():
                popleft()
                queue.forget(item)
                continue
            if item.rerun is not None:  # it runs again alone; it was admitted and ran once, so no late check
                if batch:
                    break
                popleft()
                item.state = TAKEN
                waited, rows = now - item.enqueued, item.rows
                batch.append(item)
                break
            if batch and rows + item.rows > ceiling:
                break  # it waits for the next batch, whole: a request's rows are never split
            popleft()
            if check and not item.probe:
                predicted = predict(rows + item.rows)
                if predicted is not None and now + predicted > item.latency_deadline:
                    item.future.set_exception(
                        admission.late(policy, queue.depth, now, stats, predicted, now - item.enqueued)
                    )
                    item.release()
                    continue
            item.state = TAKEN
            waited += now - item.enqueued
            rows += item.rows
            batch.append(item)
        if batch:  # the first item is the oldest
            stats.queue_time.add_many(len(batch), waited, now - batch[0].enqueued)
            policy.saw_batch(len(batch), rows)
        return batch, rows

    def _finish(self, lease: Lease, queue: ApiQueue, size: int) -> None:
        self.watchdog.finished(lease)
        self._admission.finish(queue.policy.lanes[lease.key])
        queue.stats.in_flight[lease.key] -= size
        self.progress.set()

    async def _execute(self, lease: Lease, queue: ApiQueue, batch: list[Pending], rows: int,
                       loop: asyncio.AbstractEventLoop) -> None:
        stats = queue.stats
        api = queue.api
        streams = None
        if api.streams:
            streams = StreamBatch(batch, stats, self._stream_limits, loop)
        watch = _watch_for_gone(lease, batch) if api.is_async and streams is None else None
        try:
            if streams is None:
                result = await lease.run(api.name, [item.kwargs for item in batch], [item.encoder for item in batch])
            else:
                result = await lease.stream(api.name, [item.kwargs for item in batch],
                                            [item.encoder for item in batch], streams)
        except ExecutorStuck:
            self._finish(lease, queue, len(batch))
            stopped = Refused(Reason.CALL_TIMEOUT, f"{api.name!r} ran longer than its call limit of "
                              f"{queue.call_limit:g} s and was stopped; its replica is being replaced")
            _fail(batch, streams, stopped, stats, Reason.CALL_TIMEOUT.value)
            lease.replace()
            return
        except ExecutorDied as exc:
            self._finish(lease, queue, len(batch))
            # A stream's values went out as they came: it cannot run again. Nor can anything once
            # the server stops: no replica will be rebuilt.
            if streams is not None or self._pool.stopping:
                log.error("%s; failing %d request(s)", exc, len(batch))
                lost = Refused(Reason.EXECUTOR_LOST, str(exc), retry_after=1)
                _fail(batch, streams, lost, stats, Reason.EXECUTOR_LOST.value)
            else:
                rerun.lost(queue, batch, exc)
                self.wake()
            lease.replace()
            return
        except Exception as exc:  # the executor itself failed, not the user's code
            self._finish(lease, queue, len(batch))
            log.exception("executor %s failed a batch", lease.key)
            _fail(batch, streams, ItemFailed(Failure.of(exc)), stats, ERROR)
            lease.release()
            return
        except BaseException:  # cancelled: the server is stopping
            self._finish(lease, queue, len(batch))
            stopped = Refused(Reason.SHUTTING_DOWN, "the server shut down while this ran", retry_after=1)
            _fail(batch, streams, stopped, stats, Reason.SHUTTING_DOWN.value)
            raise
        finally:
            if watch is not None:
                watch.running = False
        self._finish(lease, queue, len(batch))
        lease.release()
        stats.exec_time[lease.key].add(result.exec_s)
        if streams is not None:  # every stream has ended or left: its steps came before the result
            streams.close()
            return
        if result.failure is not None:
            self._failed_whole(lease, queue, batch, rows, result)
            return
        policy = queue.policy
        now = loop.time()
        self._admission.learn(policy, policy.lanes[lease.key], rows, result, now, stats)
        again = batch[0].rerun
        if again is not None and again.oom is not None and result.out_of_memory:
            self._admission.oom_explained(policy, again.oom, stats)
        settle(batch, result, stats)

    def _failed_whole(self, lease: Lease, queue: ApiQueue, batch: list[Pending], rows: int,
                      result: BatchResult) -> None:
        """A call of several requests raised as a whole: run each of them again, alone."""
        policy = queue.policy
        suspect = None
        if result.out_of_memory:
            suspect = self._admission.out_of_memory(policy, policy.lanes[lease.key], rows,
                                                    asyncio.get_running_loop().time(), queue.stats)
        count = rerun.again_alone(queue, batch, oom=suspect)
        failure = result.failure
        assert failure is not None
        log.warning("a batch of %d requests of %r failed as a whole on %s (%s: %s); running %d of them again, "
                    "each alone", len(batch), policy.api.name, lease.key, failure.type, failure.message, count)
        self.wake()


def _fail(batch: list[Pending], streams: StreamBatch | None, exc: ItemFailed | Refused, stats: ApiStats,
          outcome: str) -> None:
    """A batch that could not go on: streams that started end with `exc`, the other requests are answered with it."""
    if streams is not None:
        streams.abort(exc)
    fail(batch, exc, stats, outcome)


class _Watch:
    """While an async batch runs, a request that leaves (client gone, deadline passed) cancels its call."""

    __slots__ = ("lease", "running")

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.running = True

    def gone(self, index: int, future: asyncio.Future[Any]) -> None:
        if self.running:
            self.lease.cancel(index)


def _watch_for_gone(lease: Lease, batch: list[Pending]) -> _Watch:
    # Only async APIs pay for a callback per request: synchronous code cannot be interrupted.
    watch = _Watch(lease)
    for index, item in enumerate(batch):
        item.future.add_done_callback(functools.partial(watch.gone, index))
    return watch
