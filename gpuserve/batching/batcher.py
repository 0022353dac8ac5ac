"""The batcher: bounded per-API queues feeding free executors of the pool.

Each request carries a deadline kept here, on the event loop, apart from any
executor (`gpuserve.deadlines`); `max_latency_ms` is kept by admission
(`admission.py`); queued work goes to executors as they come free
(`dispatch.py`) and comes back settled (`settle.py`).

Per request the batcher does a few comparisons, one deque append and, for the
result, one `set_result`: no timer, no done callback. Clients that left while
queued are counted when their item leaves the queue, or when the queue is
swept: before `stats` are read, and when it looks full.

A streaming API's request is queued and batched the same way; its future
resolves to its `Stream` with its first value (`streams.py`), and its protocol
holds one of the API's `StreamLimits.max_streams` places (`open_stream`) until
the stream is over.

A call that runs past its API's limit is found by the dispatcher's watchdog
(`watchdog.py`); an input that crashed replicas twice is refused at the door
(`quarantine.py`): only while some input of the API is quarantined does a
request pay for the check.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from gpuserve.batching.admission import Admission
from gpuserve.batching.dispatch import Dispatcher
from gpuserve.batching.queue import ApiQueue, Pending, default_queue_size
from gpuserve.batching.refusals import Reason, Refused
from gpuserve.batching.rerun import refuse_quarantined
from gpuserve.batching.settle import expire
from gpuserve.batching.streams import StreamLimits
from gpuserve.deadlines import Deadlines
from gpuserve.outcomes import Encoder
from gpuserve.pool import DevicePool
from gpuserve.service import ApiSpec
from gpuserve.stats import Stats


class Batcher:
    """`timeout` is the default deadline of every request, in seconds (None: none); a stream's, to its first
    value. `call_timeout` is how long one call may run before its replica counts as stuck (None: `timeout`;
    an API's own `call_timeout` wins; streams are bounded by their `StreamLimits` instead)."""

    def __init__(
        self, apis: Iterable[ApiSpec], pool: DevicePool, *, queue_size: int | None = None,
        timeout: float | None = None, call_timeout: float | None = None, stream_limits: StreamLimits | None = None,
    ) -> None:
        apis = list(apis)
        self.stats = Stats([api.name for api in apis], frozenset(api.name for api in apis if api.streams))
        self.stream_limits = stream_limits or StreamLimits()
        self._admission = Admission(pool.keys)
        self._queues: dict[str, ApiQueue] = {}
        for api in apis:
            limit = queue_size or default_queue_size(api, len(pool))
            queue = ApiQueue(api, limit, self.stats[api.name], self._admission.add(api, limit))
            # A stream runs as long as its StreamLimits allow: the watchdog leaves it to them.
            queue.call_limit = None if api.streams else api.call_timeout or call_timeout or timeout
            self._queues[api.name] = queue
        self._deadlines = Deadlines(timeout, expire)
        self._dispatcher = Dispatcher(self._queues.values(), pool, self._admission, self.stream_limits)
        self._tasks: list[asyncio.Task[None]] = []
        self.accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves on: see `_bind_loop`
        self._refusal = (Reason.SHUTTING_DOWN, "the server is shutting down")  # what a closed door says

    # -- the request side ----------------------------------------------------------
    def admit(self, api_name: str) -> bool:
        """Decide at the door whether a request of `api_name` may be queued, before its body is read.

        Raises `Refused` (shutting down, failed, queue full, cannot meet
        `max_latency_ms`), else returns whether it is admitted only as a probe
        of the latency model: pass that to `submit` as `probe`. Nothing here
        depends on what the request carries, so a refusal costs no reading
        and no decoding.
        """
        return self._decide(self._queues[api_name], (self._loop or self._bind_loop()).time())

    def below_half(self, api_name: str) -> int:
        """How many requests the API's queue would take before it is half full (0 when it is fuller)."""
        queue = self._queues[api_name]
        return max(queue.limit // 2 - queue.depth, 0)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, kept: the batcher serves on the first loop it is used on. Asked once because on
        CPython 3.11 every `asyncio.get_running_loop()` makes a getpid system call, two of them a request
        here (measured: about 1 µs of the event loop's CPU a request, 2 % of the batched MLP's req/s)."""
        loop = self._loop = asyncio.get_running_loop()
        return loop

    def _decide(self, queue: ApiQueue, now: float) -> bool:
        depth = self._room(queue, now)
        policy = queue.policy
        return depth >= policy.admit_below and self._admission.check(policy, depth, now, queue.stats)

    def _room(self, queue: ApiQueue, now: float) -> int:
        """The queue's depth; raises `Refused` when the server is stopping or the queue is full."""
        if not self.accepting:
            reason, message = self._refusal
            queue.stats.refusals[reason.value] += 1
            raise Refused(reason, message, retry_after=1)
        depth = len(queue.items) - queue.expired  # `queue.depth`, without a call on every request
        if depth >= queue.limit:
            depth = queue.checked_depth(now)  # swept first, when it is time, of clients that left
        if depth >= queue.limit:
            queue.stats.refusals[Reason.QUEUE_FULL.value] += 1
            raise Refused(
                Reason.QUEUE_FULL,
                f"queue of {queue.api.name!r} is full ({queue.limit} waiting)",
                retry_after=self._admission.retry_after(queue.policy, depth),
            )
        return depth

    def submit(
        self, api_name: str, kwargs: dict[str, Any], encoder: Encoder, timeout: float | None = None, rows: int = 1,
        request_id: str | None = None, *, probe: bool | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one request of `rows` rows; the future resolves to its result, encoded by `encoder`, or raises.

        Raises `Refused` at once (queue full, latency, shutting down, failed,
        quarantined input) instead of queueing work that cannot be served in
        time. `probe` is what `admit`
        decided at the door (the latency model is then not asked again; the
        queue may have filled meanwhile, so its room is); None decides here.
        After `timeout` seconds (None: the batcher's default) the future raises
        `Refused` for the deadline, wherever the item is; cancelling the future
        (the client left) drops the item if it has not started. `request_id`
        names the request in logs.
        """
        queue = self._queues[api_name]
        loop = self._loop or self._bind_loop()
        now = loop.time()
        if probe is None:
            probe = self._decide(queue, now)
        else:
            self._room(queue, now)
        if queue.quarantine is not None and queue.quarantine.holds(kwargs):
            raise refuse_quarantined(queue)
        future = loop.create_future()
        item = Pending(kwargs, rows, encoder, future, queue, now, probe, request_id)
        deadline = self._deadlines.default_timeout if timeout is None else timeout
        if deadline is not None:
            item.timeout = deadline
            item.expires = now + deadline
            self._deadlines.track(item, loop, timeout)
        queue.items.append(item)
        self._dispatcher.wake()
        return future

    def open_stream(self, api_name: str) -> None:
        """Take one of a streaming API's places for open streams, or raise `Refused` when all are taken."""
        stats = self.stats[api_name]
        limit = self.stream_limits.max_streams
        if stats.streams >= limit:
            stats.refusals[Reason.STREAMS_FULL.value] += 1
            raise Refused(Reason.STREAMS_FULL, f"{api_name!r} has {limit} streams open (--max-streams)",
                          retry_after=1)
        stats.streams += 1

    def close_stream(self, api_name: str) -> None:
        """Give back the place `open_stream` took: the stream is over (or never started)."""
        self.stats[api_name].streams -= 1

    # -- the dispatch side -----------------------------------------------------------
    def start(self, on_failure: Callable[[BaseException], None]) -> None:
        """Start dispatching and the watchdog; `on_failure` hears of either dying (requests would then wait)."""
        loop = self._bind_loop()

        def watch(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                on_failure(done.exception())  # type: ignore[arg-type]

        self._tasks = [loop.create_task(self._dispatcher.run(), name="gpuserve-dispatch"),
                       loop.create_task(self._dispatcher.watchdog.run(), name="gpuserve-watchdog")]
        for task in self._tasks:
            task.add_done_callback(watch)

    def read_stats(self) -> Stats:
        """The serving signals, with every queue's depth made exact first."""
        for queue in self._queues.values():
            queue.sweep()
        return self.stats

    def stop_accepting(self, reason: Reason, message: str) -> None:
        """Refuse every new request from now on with `reason` (503, `Retry-After`)."""
        if self.accepting:
            self.accepting = False
            self._refusal = (reason, message)

    def refuse_queued(self, reason: Reason, message: str) -> None:
        """Answer every request still queued with `reason` (503, `Retry-After`): none will run."""
        for queue in self._queues.values():
            while queue.items:
                item: Pending = queue.pop()
                if not item.future.done():
                    queue.stats.refusals[reason.value] += 1
                    item.future.set_exception(Refused(reason, message, retry_after=1))
                    item.release()
            queue.stats.queue_depth = 0

    async def drain(self, until: float) -> None:
        """Stop taking requests; let queued and running work finish until loop time `until`, then `close`."""
        self.stop_accepting(Reason.SHUTTING_DOWN, "the server is shutting down")
        loop = asyncio.get_running_loop()
        progress = self._dispatcher.progress
        while not self._finished() and (left := until - loop.time()) > 0:
            progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(progress.wait(), left)
        await self.close()

    def _finished(self) -> bool:
        for queue in self._queues.values():
            queue.sweep()
        return self._dispatcher.idle and not any(queue.items for queue in self._queues.values())

    async def close(self) -> None:
        """Stop dispatching; answer what is left, running or queued, as shut down. Idempotent."""
        self.stop_accepting(Reason.SHUTTING_DOWN, "the server is shutting down")
        tasks, self._tasks = self._tasks, []
        for task in tasks:  # cancelling the dispatcher fails the running batches' items
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was reported already
                await task
        self._deadlines.close()
        self.refuse_queued(Reason.SHUTTING_DOWN, "the server shut down before this ran")
