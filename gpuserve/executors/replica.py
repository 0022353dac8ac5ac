"""A built service instance and how it runs one batch.

This runs inside an executor (a worker thread or a child process), never on
the server's event loop. A call that raises fails only its own requests: a
call of one request fails that request; a call of several that raises as a
whole (out of memory included, and a wrong number of results) blames none of
them and says so in its `BatchResult`, and the batcher runs each of them again
alone (`gpuserve.batching.rerun`).

A batchable API's requests carry rows (see `gpuserve.signature`): their rows
are merged along dimension 0 into one call — lists concatenated, arrays
joined with one `numpy.concatenate` — and the method's results are cut back
into each request's own rows. `async def` methods run on the replica's own
event loop, one call at a time like any other, and can be cancelled from the
server (`cancel_threadsafe`, or a message to a worker process). Generator
methods stream (`stream`, stepped by `executors/streaming.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gpuserve.backend import Backend
from gpuserve.context import ReplicaContext, bind
from gpuserve.executors.streaming import Emit, StreamControl, run_stream, steps_for
from gpuserve.outcomes import BatchResult, Encoder, Failure, exc_text
from gpuserve.service import ApiSpec, ServiceSpec
from gpuserve.signature import Param


def _encoded(outcome: Any, encode: Encoder) -> Any:
    """A request's encoded result, or its Failure."""
    if isinstance(outcome, Failure):
        return outcome
    try:
        return encode(outcome)
    except Exception as exc:  # a result its protocol cannot frame fails its own request, no other
        return Failure.of(exc, f"its result cannot be encoded: {exc_text(exc)}")


def _encode_all(outcomes: list[Any], encoders: Sequence[Encoder]) -> list[Any]:
    """Every request's encoded result, or its Failure: in one C loop when one encoder fits all."""
    first = encoders[0]
    if encoders.count(first) == len(encoders) and not any(isinstance(o, Failure) for o in outcomes):
        try:
            return list(map(first, outcomes))
        except Exception:  # some result cannot be encoded: find which, request by request
            pass
    return [_encoded(outcome, encode) for outcome, encode in zip(outcomes, encoders)]


class BatchShapeError(Exception):
    """A batchable method returned a number of results other than one per row."""


class _Gone(Exception):
    """Every request of this call left (client gone or deadline passed) before it finished."""


def _rows(api: ApiSpec, item: dict[str, Any]) -> int:
    """How many rows one request of a batchable API carries (checked equal at the door)."""
    for name in api.params:
        value = item.get(name)
        if value is not None and hasattr(value, "__len__"):
            return len(value)
    return 1


def _merge(param: Param, values: list[Any]) -> Any:
    """One parameter's rows of several requests, joined along dimension 0."""
    if param.array is not None:
        return param.array.merge(values)
    return list(itertools.chain.from_iterable(values))


def _with_arrays(api: ApiSpec, item: dict[str, Any]) -> dict[str, Any]:
    """One request's arguments with its array parameters as arrays (they may travel as checked lists)."""
    arrays = [p for p in api.signature.params if p.array is not None and p.name in item]
    if not arrays:
        return item
    return {**item, **{p.name: p.array.build(item[p.name]) for p in arrays}}


class Replica:
    def __init__(self, spec: ServiceSpec, ctx: ReplicaContext, process_memory_fraction: float | None = None) -> None:
        self.spec = spec
        self.ctx = ctx
        # Frameworks cap memory per process, not per replica: the deployment
        # passes this process's whole share of the device.
        self.process_memory_fraction = process_memory_fraction
        self.instance: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None  # for async APIs, in the replica's thread
        self._batch = 0  # the batch now running, so that a late cancel of an earlier one is ignored
        self._gone: set[int] = set()  # requests of this batch whose clients left or whose deadline passed
        self._running: tuple[asyncio.Task[Any], range] | None = None  # the async call now running
        self._control: StreamControl | None = None  # the stream now running

    @property
    def backend(self) -> Backend:
        return self.ctx.backend

    def _current_device(self) -> contextlib.AbstractContextManager[None]:
        planned = self.ctx.planned
        return self.backend.device_context(planned[0]) if planned else contextlib.nullcontext()

    def build(self) -> None:
        """Construct the user's class with this replica's device current (in the thread that will run it)."""
        bind(self.ctx)
        if self.process_memory_fraction is not None:
            self.backend.limit_memory(self.ctx.planned[0], self.process_memory_fraction)
        if self.ctx.cpu_threads:
            self.backend.set_cpu_threads(self.ctx.cpu_threads)
        if any(api.is_async for api in self.spec.apis.values()):
            self.loop = asyncio.new_event_loop()
        with self._current_device():
            self.instance = self.spec.cls()

    def adopt_thread(self) -> None:
        """Make the calling thread the one that runs this replica from now on, when it is not the thread that
        built it: `gpuserve.context()` answers there (the current device is set for each batch anyway)."""
        bind(self.ctx)

    # -- cancelling (async APIs) -------------------------------------------------------
    def cancel_threadsafe(self, batch: int, index: int) -> None:
        """From another thread: request `index` of batch `batch` is gone; stop its call if it runs."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.cancel, batch, index)

    def cancel(self, batch: int, index: int) -> None:
        """In the replica's thread: as `cancel_threadsafe`. A late message for an earlier batch is ignored."""
        if batch != self._batch:
            return
        if self._control is not None:
            self._control.leave(index)
            return
        self._gone.add(index)
        if self._running is not None:
            task, indices = self._running
            if all(i in self._gone for i in indices):
                task.cancel()

    def credit(self, batch: int, steps: int) -> None:
        """In the replica's thread: every reader of stream `batch` still taking part has taken `steps` values."""
        if batch == self._batch and self._control is not None:
            self._control.credit(steps)

    # -- running ---------------------------------------------------------------------------
    def run(self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder],
            batch: int = 0) -> BatchResult:
        """Run one batch (numbered `batch`, for cancels); each request's result encoded by its encoder."""
        api = self.spec.apis[api_name]
        self._batch, self._gone = batch, set()
        call = self._caller(api)
        with self._current_device():
            if not api.batchable:
                outcomes, exec_s = self._run_each(items, call)
                return BatchResult(_encode_all(outcomes, encoders), exec_s)
            start = time.perf_counter()
            try:
                outcomes = self._run_merged(api, items, call)
            except _Gone as exc:  # nobody is waiting for these any more
                return BatchResult([Failure.of(exc)] * len(items), time.perf_counter() - start)
            except Exception as exc:
                exec_s = time.perf_counter() - start
                oom = self.backend.is_out_of_memory(exc)
                if len(items) > 1:  # which request is to blame is found by running each alone
                    return BatchResult([], exec_s, failure=Failure.of(exc), out_of_memory=oom)
                return BatchResult([Failure.of(exc)], exec_s, out_of_memory=oom)
            # Encoded here, beside the model: a tensor's copy to the host never
            # runs on the event loop, and never crosses a process boundary.
            return BatchResult(_encode_all(outcomes, encoders), time.perf_counter() - start)

    def stream(self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder], batch: int,
               emit: Emit, control: StreamControl) -> BatchResult:
        """Run one streamed batch (numbered `batch`): each value goes to `emit`, encoded, as it is yielded."""
        api = self.spec.apis[api_name]
        self._batch, self._control = batch, control
        method = getattr(self.instance, api.method_name)
        try:
            with self._current_device():
                try:
                    if api.batchable:  # one row per request: the rows merged as for any batch
                        generators = [method(**_merged_kwargs(api, items, [_rows(api, item) for item in items]))]
                    else:
                        generators = [method(**_with_arrays(api, item)) for item in items]
                except Exception as exc:  # the call itself failed: nothing was yielded
                    emit(list(range(len(items))), [Failure.of(exc)] * len(items))
                    return BatchResult([None] * len(items), 0.0)
                steps = steps_for(generators, api.batchable, control, self.loop if api.is_async else None)
                return run_stream(steps, encoders, emit, control)
        finally:
            self._control = None

    def _caller(self, api: ApiSpec) -> Callable[[dict[str, Any], range], Any]:
        """How to call the method with keyword arguments, for the requests at `indices`."""
        method = getattr(self.instance, api.method_name)
        if not api.batchable and api.signature.arrays:
            # Its arrays may have travelled as checked lists (a batch's are built by `_merged_kwargs`).
            if not api.is_async:
                return lambda kwargs, indices: method(**_with_arrays(api, kwargs))
            return lambda kwargs, indices: self._await(method(**_with_arrays(api, kwargs)), indices)
        if not api.is_async:
            return lambda kwargs, indices: method(**kwargs)
        return lambda kwargs, indices: self._await(method(**kwargs), indices)

    def _await(self, coroutine: Coroutine[Any, Any, Any], indices: range) -> Any:
        """Run an async call to its end on the replica's loop; `_Gone` if all its requests left meanwhile."""
        assert self.loop is not None
        if all(i in self._gone for i in indices):
            coroutine.close()
            raise _Gone()
        task = self.loop.create_task(coroutine)
        self._running = (task, indices)
        try:
            return self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            raise _Gone() from None
        finally:
            self._running = None

    def _run_each(self, items: Sequence[dict[str, Any]], call: Callable[..., Any]) -> tuple[list[Any], float]:
        """One call per request: grouped only to share the hop to this executor."""
        outcomes: list[Any] = []
        start = time.perf_counter()
        for index, item in enumerate(items):
            try:
                outcomes.append(call(item, range(index, index + 1)))
            except Exception as exc:  # this request alone fails, out of memory or not
                outcomes.append(Failure.of(exc))
        return outcomes, time.perf_counter() - start

    def _run_merged(self, api: ApiSpec, items: Sequence[dict[str, Any]], call: Callable[..., Any]) -> list[Any]:
        """One call over every request's rows, merged; each request's own rows of the results."""
        rows = [_rows(api, item) for item in items]
        results = call(_merged_kwargs(api, items, rows), range(len(items)))
        total = sum(rows)
        count = len(results) if hasattr(results, "__len__") else None
        if count != total:
            got = count if count is not None else type(results).__name__
            raise BatchShapeError(
                f"batchable API {api.name!r} returned {got} results for {total} row(s); "
                "it must return one result per row"
            )
        offsets = [0, *itertools.accumulate(rows)]  # request i holds rows offsets[i]..offsets[i+1]
        return [results[offsets[i]:offsets[i + 1]] for i in range(len(items))]


def _merged_kwargs(api: ApiSpec, items: Sequence[dict[str, Any]], rows: list[int]) -> dict[str, Any]:
    """The method's arguments: each parameter's rows of every request, joined along dimension 0."""
    if len(items) == 1:  # a request alone: its own values (its arrays built), nothing to merge
        only = _with_arrays(api, items[0])
        return {p.name: only[p.name] if p.name in only else [p.default] * rows[0] for p in api.signature.params}
    return {
        p.name: _merge(p, [item[p.name] if p.name in item else [p.default] * n for item, n in zip(items, rows)])
        for p in api.signature.params
    }
