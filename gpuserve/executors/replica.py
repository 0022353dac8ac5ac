"""A built service instance and how it runs one batch.

This runs inside an executor (a worker thread or a child process), never on
the server's event loop. Failures are isolated here, next to the model, so a
process executor needs no extra round trips: a failing batch is bisected until
only the failing requests fail, and an out-of-memory batch is split and retried.

A batchable API's requests carry rows (see `gpuserve.signature`): their rows
are merged along dimension 0 into one call — lists concatenated, arrays
joined with one `numpy.concatenate` — and the method's results are cut back
into each request's own rows. `async def` methods run on the replica's own
event loop, one call at a time like any other, and can be cancelled from the
server (`cancel_threadsafe`, or a message to a worker process).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gpuserve.arrays import concatenate
from gpuserve.backend import Backend
from gpuserve.context import ReplicaContext, bind
from gpuserve.outcomes import BatchResult, Encoder, Failure
from gpuserve.service import ApiSpec, ServiceSpec
from gpuserve.signature import Param


def _encoded(outcome: Any, encode: Encoder) -> Any:
    """A request's encoded result, or its Failure."""
    if isinstance(outcome, Failure):
        return outcome
    try:
        return encode(outcome)
    except (TypeError, ValueError) as exc:
        return Failure.of(exc, f"its result cannot be encoded: {exc}")


def _encode_all(outcomes: list[Any], encoders: Sequence[Encoder]) -> list[Any]:
    """Every request's encoded result, or its Failure: in one C loop when one encoder fits all."""
    first = encoders[0]
    if encoders.count(first) == len(encoders) and not any(isinstance(o, Failure) for o in outcomes):
        try:
            return list(map(first, outcomes))
        except (TypeError, ValueError):  # some result cannot be encoded: find which, request by request
            pass
    return [_encoded(outcome, encode) for outcome, encode in zip(outcomes, encoders)]


class BatchShapeError(Exception):
    pass


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
        return concatenate(values)
    return list(itertools.chain.from_iterable(values))


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

    # -- cancelling (async APIs) -------------------------------------------------------
    def cancel_threadsafe(self, batch: int, index: int) -> None:
        """From another thread: request `index` of batch `batch` is gone; stop its call if it runs."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.cancel, batch, index)

    def cancel(self, batch: int, index: int) -> None:
        """In the replica's thread: as `cancel_threadsafe`. A late message for an earlier batch is ignored."""
        if batch != self._batch:
            return
        self._gone.add(index)
        if self._running is not None:
            task, indices = self._running
            if all(i in self._gone for i in indices):
                task.cancel()

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
                oom_ceiling = None
            else:
                run = _BatchRun(api, items)
                self._run_range(run, call, 0, len(items))
                outcomes, exec_s, oom_ceiling = run.outcomes, run.exec_s, run.oom_ceiling()
            # Encoded here, beside the model: a tensor's copy to the host never
            # runs on the event loop, and never crosses a process boundary.
            encoded = _encode_all(outcomes, encoders)
        return BatchResult(encoded, exec_s, oom_ceiling)

    def _caller(self, api: ApiSpec) -> Callable[[dict[str, Any], range], Any]:
        """How to call the method with keyword arguments, for the requests at `indices`."""
        method = getattr(self.instance, api.method_name)
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

    def _run_range(self, run: _BatchRun, call: Callable[..., Any], lo: int, hi: int) -> None:
        start = time.perf_counter()
        try:
            run.answer(lo, hi, call(run.kwargs(lo, hi), range(lo, hi)))
            return
        except BatchShapeError as exc:  # a contract error: splitting would only hide it
            run.fail(lo, hi, exc)
            return
        except _Gone as exc:  # nobody is waiting for these any more
            run.fail(lo, hi, exc)
            return
        except Exception as exc:
            if hi - lo == 1:
                run.fail(lo, hi, exc)
                return
            if self.backend.is_out_of_memory(exc):
                run.out_of_memory(lo, hi)
        finally:
            run.exec_s += time.perf_counter() - start
        mid = (lo + hi) // 2
        self._run_range(run, call, lo, mid)
        self._run_range(run, call, mid, hi)


class _BatchRun:
    """One batchable batch as it runs: requests' rows, merged calls, outcomes, what out of memory taught."""

    def __init__(self, api: ApiSpec, items: Sequence[dict[str, Any]]) -> None:
        self.api = api
        self.items = items
        rows = [_rows(api, item) for item in items]
        self.offsets = [0, *itertools.accumulate(rows)]  # request i holds rows offsets[i]..offsets[i+1]
        self.outcomes: list[Any] = [None] * len(items)
        self.exec_s = 0.0
        self._oom: int | None = None  # the fewest rows that ran out of memory
        self._ran: list[int] = []  # rows of each call that succeeded

    def rows(self, lo: int, hi: int) -> int:
        return self.offsets[hi] - self.offsets[lo]

    def kwargs(self, lo: int, hi: int) -> dict[str, Any]:
        items = self.items[lo:hi]
        if len(items) == 1:  # a request alone: its own values, nothing to merge
            only = items[0]
            return {p.name: only[p.name] if p.name in only else [p.default] * self.rows(lo, hi)
                    for p in self.api.signature.params}
        merged = {}
        for p in self.api.signature.params:
            values = [item[p.name] if p.name in item else [p.default] * self.rows(lo + i, lo + i + 1)
                      for i, item in enumerate(items)]
            merged[p.name] = _merge(p, values)
        return merged

    def answer(self, lo: int, hi: int, results: Any) -> None:
        rows = self.rows(lo, hi)
        count = len(results) if hasattr(results, "__len__") else None
        if count != rows:
            got = count if count is not None else type(results).__name__
            raise BatchShapeError(
                f"batchable API {self.api.name!r} returned {got} results for {rows} rows; "
                "it must return one result per row"
            )
        base = self.offsets[lo]
        for i in range(lo, hi):
            self.outcomes[i] = results[self.offsets[i] - base:self.offsets[i + 1] - base]
        self._ran.append(rows)

    def fail(self, lo: int, hi: int, exc: BaseException) -> None:
        failure = Failure.of(exc)
        self.outcomes[lo:hi] = [failure] * (hi - lo)

    def out_of_memory(self, lo: int, hi: int) -> None:
        rows = self.rows(lo, hi)
        self._oom = rows if self._oom is None else min(self._oom, rows)

    def oom_ceiling(self) -> int | None:
        """After an out-of-memory error: the most rows that still ran below it (in rows, as batches count)."""
        if self._oom is None:
            return None
        return max((rows for rows in self._ran if rows < self._oom), default=max(1, self._oom // 2))
