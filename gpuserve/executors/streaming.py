"""A streaming API in its replica: generators stepped beside the model, each value sent as it comes.

A streamed batch runs in steps. A step takes one value for every request still
taking part: from the one generator of a batchable API (a list: one value per
row), or from each request's own generator when the API is not batchable (the
requests handed over together advance in turn, one value each per step). Each
value is encoded at once by its request's encoder, and the step goes to the
server (`emit`) as one message: the requests' indices and, for each, its
encoded value, None when its stream is over, or its `Failure`.

What the server says back arrives through a `StreamControl`: how many steps
every reader still taking part has taken (its credit), and which requests left
(client gone, a limit passed). The producer waits while its `StreamWindow` is
full (`STREAM_WINDOW` steps ahead of the slowest reader, or `STREAM_WINDOW_BYTES`
past the first of them), so a slow reader makes it wait and memory never grows
with the length of a stream. A request that left drops out before the next
step (its own generator is closed: `GeneratorExit` where it waits); an async
generator's pending step is cancelled at once. Thread executors call the
control from the event loop's thread; a worker process applies what arrives on
its socket (`child.py` waits that way). Both run this same loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any

from gpuserve.outcomes import END, BatchResult, Encoder, Failure, StreamWindow, exc_text

log = logging.getLogger("gpuserve.api")

Emit = Callable[[list[int], list[Any]], None]  # (request indices, their outcomes) of one step, to the server
_LEFT = object()  # in a step's values: this request left while its step ran (nothing to send)


class StepShapeError(Exception):
    """A batchable generator yielded a step that does not hold one value per row."""


class StreamControl:
    """What the server tells a running stream; safe to call from any thread.

    `credit(steps)`: every reader still taking part has taken `steps` values.
    `leave(index)`: request `index` left; `stop()`: every request left.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.credited = 0
        self.gone: set[int] = set()
        self._changed = threading.Condition()
        self.on_leave: Callable[[], None] | None = None  # set by an async run: interrupts the step it waits on

    def credit(self, steps: int) -> None:
        with self._changed:
            if steps > self.credited:
                self.credited = steps
                self._changed.notify()

    def leave(self, index: int) -> None:
        with self._changed:
            self.gone.add(index)
            self._changed.notify()
        if self.on_leave is not None:
            self.on_leave()

    def stop(self) -> None:
        for index in range(self.count):
            self.leave(index)

    # -- the producer's side (overridden where messages must be read to be applied) --
    def poll(self) -> None:
        """Apply what the server said meanwhile; here it was applied as it came."""

    def wait(self, ready: Callable[[], bool]) -> None:
        """Block until `ready()`, re-checked whenever the server says something."""
        with self._changed:
            while not ready():
                self._changed.wait()


# -- steps: where the values come from -----------------------------------------------------
class _Batched:
    """The one generator of a batchable API: each step, one value per row (position) it was sent."""

    def __init__(self, generator: Generator[Any, Any, Any], count: int) -> None:
        self.generator = generator
        self.count = count  # rows it started with: a step may also hold one value for each of them
        self.open = True

    def step(self, live: list[int], shown: list[int] | None) -> list[Any]:
        try:
            values = self.generator.send(_positions(shown, live))
        except StopIteration:
            self.open = False
            return [END] * len(live)
        except Exception as exc:
            self.open = False
            return [Failure.of(exc)] * len(live)
        aligned = _aligned(values, live, self.count)
        if type(aligned[0]) is Failure:
            self.close()
        return aligned

    def drop(self, index: int) -> None:
        """Row `index` no longer takes part: the next step's positions leave it out."""

    def close(self) -> None:
        if self.open:
            self.open = False
            _close(self.generator)


class _Each:
    """One generator per request (an API that is not batchable): each step, one value from each."""

    def __init__(self, generators: list[Generator[Any, Any, Any]]) -> None:
        self.generators: dict[int, Generator[Any, Any, Any]] = dict(enumerate(generators))

    def step(self, live: list[int], shown: list[int] | None) -> list[Any]:
        values = []
        for index in live:
            try:
                values.append(next(self.generators[index]))
            except StopIteration:
                del self.generators[index]
                values.append(END)
            except Exception as exc:
                del self.generators[index]
                values.append(Failure.of(exc))
        return values

    def drop(self, index: int) -> None:
        generator = self.generators.pop(index, None)
        if generator is not None:
            _close(generator)

    def close(self) -> None:
        for index in list(self.generators):
            self.drop(index)


def _aligned(values: Any, live: list[int], started: int) -> list[Any]:
    """A batched step's values, one per row taking part: it yields one per row taking part, or one per row it
    started with (it ignores who left: their values are dropped); anything else fails every row."""
    count = len(values) if hasattr(values, "__len__") else None
    if count == len(live):
        return list(values)
    if count == started:
        return [values[i] for i in live]
    got = count if count is not None else type(values).__name__
    failure = Failure.of(StepShapeError(
        f"a batchable streaming API yields, per step, one value per row taking part ({len(live)}) or per row "
        f"it started with ({started}), got {got}; the value of `yield` lists the positions still taking part"))
    return [failure] * len(live)


def _close(generator: Generator[Any, Any, Any]) -> None:
    try:
        generator.close()  # GeneratorExit where it waits
    except Exception:
        log.exception("a streaming API's generator failed while it was closed")


class _Async:
    """Async generators on the replica's own event loop: each step runs there, and is cancelled when its
    requests leave (the batched one when all have left)."""

    def __init__(self, generators: list[AsyncGenerator[Any, Any]], loop: asyncio.AbstractEventLoop,
                 control: StreamControl, batched: bool) -> None:
        self.generators: dict[int, AsyncGenerator[Any, Any]] = dict(enumerate(generators))
        self.loop = loop
        self.control = control
        self.batched = batched
        self.count = control.count
        self._steps: dict[int, asyncio.Task[Any]] = {}  # index (the batched one: 0) -> its pending step
        self._live: list[int] = []
        control.on_leave = self._left

    def _left(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        gone = self.control.gone
        if self.batched:
            if self._steps and all(i in gone for i in self._live):
                self._steps[0].cancel()
            return
        for index, task in self._steps.items():
            if index in gone:
                task.cancel()

    def step(self, live: list[int], shown: list[int] | None) -> list[Any]:
        self._live = live
        if self.batched:
            self._steps = {0: self.loop.create_task(self.generators[0].asend(_positions(shown, live)))}
        else:
            self._steps = {i: self.loop.create_task(self.generators[i].__anext__()) for i in live}
        try:
            self.loop.run_until_complete(asyncio.wait(self._steps.values()))
            if self.batched:
                return self._batched_values(self._steps[0], live)
            return [self._value(i, self._steps[i]) for i in live]
        finally:
            self._steps = {}

    def _batched_values(self, task: asyncio.Task[Any], live: list[int]) -> list[Any]:
        if task.cancelled():
            return [_LEFT] * len(live)
        value = self._value(0, task)
        if value is END or type(value) is Failure:
            return [value] * len(live)
        aligned = _aligned(value, live, self.count)
        if type(aligned[0]) is Failure:
            self.close()
        return aligned

    def _value(self, index: int, task: asyncio.Task[Any]) -> Any:
        if task.cancelled():
            if index in self.control.gone or self.batched:
                self.generators.pop(index, None)  # the cancellation ended it
                return _LEFT
            return Failure.of(asyncio.CancelledError("the step was cancelled"))
        exc = task.exception()
        if exc is None:
            return task.result()
        self.generators.pop(index, None)
        return END if isinstance(exc, StopAsyncIteration) else Failure.of(exc)

    def drop(self, index: int) -> None:
        if not self.batched:
            self._aclose(self.generators.pop(index, None))

    def close(self) -> None:
        for index in list(self.generators):
            self._aclose(self.generators.pop(index))

    def _aclose(self, generator: AsyncGenerator[Any, Any] | None) -> None:
        if generator is None:
            return
        try:
            self.loop.run_until_complete(generator.aclose())
        except Exception:
            log.exception("a streaming API's async generator failed while it was closed")


def steps_for(generators: list[Any], batched: bool, control: StreamControl,
              loop: asyncio.AbstractEventLoop | None) -> _Batched | _Each | _Async:
    """How a batch's generators (the batchable API's one, or one per request) are stepped."""
    if loop is not None:
        return _Async(generators, loop, control, batched)
    return _Batched(generators[0], control.count) if batched else _Each(generators)


def run_stream(steps: _Batched | _Each | _Async, encoders: Sequence[Encoder], emit: Emit,
               control: StreamControl) -> BatchResult:
    """Step until no request takes part any more; every request's stream is ended or left by then.

    Stream encoders return bytes: the window counts them.
    """
    live = list(range(control.count))  # requests taking part
    shown: list[int] | None = None  # the requests the last step's values stood for, in order
    window = StreamWindow()
    poll, gone = control.poll, control.gone
    clock = time.perf_counter
    exec_s = 0.0
    try:
        while True:
            poll()
            if window.full(control.credited):
                control.wait(lambda: not window.full(control.credited) or all(i in gone for i in live))
            if gone:
                for index in [i for i in live if i in gone]:
                    steps.drop(index)
                live = [i for i in live if i not in gone]
                if not live:
                    break
            start = clock()
            values = steps.step(live, shown)
            exec_s += clock() - start
            indices: list[int] = []
            outcomes: list[Any] = []
            still: list[int] = []
            size = 0
            for index, value in zip(live, values):
                if value is _LEFT:
                    continue
                indices.append(index)
                if value is END:
                    outcome = None
                elif type(value) is Failure:
                    outcome = value
                else:
                    try:
                        outcome = encoders[index](value)
                    except Exception as exc:
                        outcome = Failure.of(exc, f"a value it yielded cannot be encoded: {exc_text(exc)}")
                    else:
                        outcomes.append(outcome)
                        size += len(outcome)
                        still.append(index)
                        continue
                outcomes.append(outcome)
                steps.drop(index)
            if indices:
                emit(indices, outcomes)
            window.sent(size)
            shown, live = live, still
            if not live:
                break
    finally:
        steps.close()
    return BatchResult([None] * control.count, exec_s)


def _positions(shown: list[int] | None, live: list[int]) -> list[int] | None:
    """Where, in the last step (None: there was none), the rows that take part in the next one were."""
    if shown is None:
        return None
    if live == shown:
        return list(range(len(live)))
    taking_part = set(live)
    return [position for position, index in enumerate(shown) if index in taking_part]
