"""Streams on the event loop: each request's values, from its replica to its reader.

A batch of a streaming API runs through `lease.stream` with a `StreamBatch` as
its sink. Steps arrive (`feed`) holding, per request, its encoded value, the
end of its stream or its failure; each request's `Stream` keeps its values
until its protocol reads them. A request's future resolves to its `Stream`
with its first value (so its deadline is the time to its first value), or
fails if the stream fails before one; a stream that ends before any value
resolves it too, already over.

Pacing: the producer waits while its `StreamWindow` is full (steps sent past
what the slowest reader still taking part took). A reader takes what came with
`read()`; what it took counts once it comes back for more (it has written it
out by then), and credit goes back as soon as the slowest reader has taken
more. The same window, counted here, says when the producer waits.

A stream leaves its batch (the producer drops it before its next step) when
its reader closes it (done, or the client left), when its request is given up
on before its first value, or when a limit passes: `StreamLimits.gap_s`
without a value while the producer is free to make one (the whole batch), or
`total_s` since the request arrived. A limit ends the stream with a `Refused`
for the deadline, which its reader sends as the stream's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import attrs

from gpuserve.batching.queue import Pending
from gpuserve.batching.refusals import ItemFailed, Reason, Refused
from gpuserve.batching.settle import ERROR, OK
from gpuserve.deadlines import RESOLUTION_S
from gpuserve.outcomes import Failure, StreamWindow
from gpuserve.pool import StreamLink
from gpuserve.stats import ApiStats


@attrs.frozen
class StreamLimits:
    """Per API: streams open at once (queued or running), and how long a stream may last and fall silent."""

    max_streams: int = 256
    total_s: float = 600.0  # from the request's arrival to its stream's last value
    gap_s: float = 60.0  # between two values, while the producer is free to make the next


class Stream:
    """One request's values as they arrive, for its protocol to read and write out.

    `error` says why it ended early: `ItemFailed` (the method raised), or
    `Refused` (a limit passed, the executor was lost, the server stops).
    """

    __slots__ = ("_batch", "_index", "_values", "_waiter", "_taken", "started", "over", "error")

    def __init__(self, batch: StreamBatch, index: int) -> None:
        self._batch = batch
        self._index = index
        self._values: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._taken = 0  # values handed out by the last read, counted when the reader comes back
        self.started = False  # its first value (or its end) came
        self.over = False  # no value will come any more
        self.error: ItemFailed | Refused | None = None

    async def read(self) -> list[bytes]:
        """The values that came since the last read, at least one; [] once the stream is over."""
        if self._taken:
            self._batch.took(self._index, self._taken)
            self._taken = 0
        while not self._values:
            if self.over:
                return []
            self._waiter = self._batch.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        values, self._values = self._values, []
        self._taken = len(values)
        return values

    def close(self) -> None:
        """The reader is done with it (the stream is over, or its client left): it stops taking part."""
        if not self.over:
            self._batch.leave(self._index, None)

    def _push(self, value: bytes) -> None:
        self._values.append(value)
        self._wake()

    def _end(self, error: ItemFailed | Refused | None) -> None:
        self.over = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class StreamBatch:
    """The event loop's side of one streamed batch: its requests' `Stream`s, pacing and limits (a `StreamSink`)."""

    def __init__(self, items: Sequence[Pending], stats: ApiStats, limits: StreamLimits,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.items = items
        self.stats = stats
        self.limits = limits
        self.loop = loop
        count = len(items)
        self.streams = [Stream(self, index) for index in range(count)]
        self._taking_part = set(range(count))  # requests the producer still makes values for
        self._taken = [0] * count  # values each reader has written out
        self._credited = 0  # steps every reader taking part took, as the producer was told
        self._behind = count  # readers taking part that have taken no more than `_credited`
        self._window = StreamWindow()  # as the producer counts it
        self._paused = False  # the producer waits on a reader
        self._link: StreamLink | None = None
        self._left_early: list[int] = []  # requests that left before the link was attached
        self._last = loop.time()  # the last value, or the last credit that let a waiting producer go on
        self._gap_timer: asyncio.TimerHandle | None = None
        self._total_timers = [loop.call_at(item.enqueued + limits.total_s, self._too_long, index)
                              for index, item in enumerate(items)]
        for index, item in enumerate(items):
            item.future.add_done_callback(lambda future, index=index: self._given_up(index, future))

    # -- from the executor (`StreamSink`) --------------------------------------------------
    def attach(self, link: StreamLink) -> None:
        self._link = link
        for index in self._left_early:
            link.leave(index)

    def feed(self, indices: list[int], outcomes: list[Any]) -> None:
        if not self._taking_part:
            return  # a step made after the batch was given up on (the server stops)
        self._last = self.loop.time()
        if self._gap_timer is None:
            self._arm_gap(self._last + self.limits.gap_s)
        streams = self.streams
        values = size = 0
        for index, outcome in zip(indices, outcomes):
            if type(outcome) is bytes:
                size += len(outcome)  # counted as the producer counts it, whoever reads it
            if index not in self._taking_part:
                continue  # it left while this step was made
            stream = streams[index]
            if outcome is None:
                self._ended(index, None)
            elif type(outcome) is Failure:
                self._ended(index, ItemFailed(outcome))
            else:
                if not stream.started:
                    self._start(index)
                stream._push(outcome)
                values += 1
        self.stats.stream_values += values
        self._window.sent(size)
        if not self._paused and self._taking_part and self._window.full(self._credited):
            self._paused = True
            self.stats.streams_waiting += 1

    # -- from readers and limits ------------------------------------------------------------
    def took(self, index: int, count: int) -> None:
        """Request `index`'s reader wrote out `count` more values."""
        before = self._taken[index]
        self._taken[index] = before + count
        if index in self._taking_part and before <= self._credited:
            self._behind -= 1
            if not self._behind:
                self._credit()

    def leave(self, index: int, error: Refused | None) -> None:
        """Request `index` stops taking part: its reader left (`error` None) or a limit passed."""
        if index not in self._taking_part:
            return  # over already
        self._leave(index)
        self.stats.outcomes[Reason.CANCELLED.value if error is None else error.reason.value] += 1
        future = self.items[index].future
        if error is not None and not future.done():  # before its first value: the request fails
            future.set_exception(error)
        self.streams[index]._end(error)

    def abort(self, error: ItemFailed | Refused) -> None:
        """The batch could not go on (executor lost or failed, server stopping): streams that started end with
        `error` (the batcher answers the others)."""
        for index in list(self._taking_part):
            if self.streams[index].started:
                self._stop_taking_part(index)
                self.streams[index]._end(error)
                outcome = ERROR if isinstance(error, ItemFailed) else error.reason.value
                self.stats.outcomes[outcome] += 1
        self._taking_part.clear()
        self.close()

    def close(self) -> None:
        """The producer has ended: stop the timers. Every request has ended or left by now."""
        for timer in self._total_timers:
            timer.cancel()
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        if self._paused:
            self._paused = False
            self.stats.streams_waiting -= 1

    # -- inside ---------------------------------------------------------------------------------
    def _start(self, index: int) -> None:
        stream = self.streams[index]
        stream.started = True
        future = self.items[index].future
        if not future.done():
            future.set_result(stream)

    def _ended(self, index: int, error: ItemFailed | None) -> None:
        self._stop_taking_part(index)
        self.stats.outcomes[OK if error is None else ERROR] += 1
        stream = self.streams[index]
        if error is not None and not stream.started:  # failed before any value: the request fails
            future = self.items[index].future
            stream.over = True
            if not future.done():
                future.set_exception(error)
            return
        if not stream.started:
            self._start(index)
        stream._end(error)

    def _stop_taking_part(self, index: int) -> None:
        self._taking_part.discard(index)
        self._total_timers[index].cancel()
        if self._taken[index] <= self._credited:
            self._behind -= 1
            if not self._behind and self._taking_part:
                self._credit()

    def _credit(self) -> None:
        """Every reader taking part took more than it was credited for: tell the producer from the slowest."""
        taken = self._taken
        credited = self._credited = min(taken[i] for i in self._taking_part)
        if self._link is not None:
            self._link.credit(credited)
        if self._paused and not self._window.full(credited):
            self._paused = False
            self.stats.streams_waiting -= 1
            self._last = self.loop.time()  # the gap counts from here: it waited on a reader, not on the model
        self._behind = sum(1 for i in self._taking_part if taken[i] <= credited)

    def _given_up(self, index: int, future: asyncio.Future[Any]) -> None:
        """Its future is done: if not by its stream starting, it was given up on before its first value."""
        if index not in self._taking_part:
            return
        if future.cancelled():  # the client left
            self.leave(index, None)
        elif future.exception() is not None:  # its deadline passed (counted by the batcher)
            self._leave(index)
            self.streams[index].over = True

    def _leave(self, index: int) -> None:
        self._stop_taking_part(index)
        if self._link is not None:
            self._link.leave(index)
        else:
            self._left_early.append(index)

    def _too_long(self, index: int) -> None:
        if index in self._taking_part:
            self.leave(index, Refused(Reason.DEADLINE, f"the stream ran longer than {self.limits.total_s:g} s "
                                                       "(--stream-timeout)"))

    def _arm_gap(self, when: float) -> None:
        self._gap_timer = self.loop.call_at(when, self._check_gap)

    def _check_gap(self) -> None:
        self._gap_timer = None
        if not self._taking_part:
            return
        now = self.loop.time()
        gap = self.limits.gap_s
        if self._paused:  # waiting on a slow reader is not the model's silence
            self._arm_gap(now + gap)
        elif now - self._last >= gap - RESOLUTION_S:
            silent = Refused(Reason.DEADLINE, f"no value for {gap:g} s (--stream-gap-timeout)")
            for index in list(self._taking_part):
                self.leave(index, silent)
        else:
            self._arm_gap(self._last + gap)

