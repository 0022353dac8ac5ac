"""A built service instance and how it runs one batch.

This runs inside an executor (a worker thread or a child process), never on
the event loop. Failures are isolated here, next to the model, so a process
executor needs no extra round trips: a failing batch is bisected until only
the failing items fail, and an out-of-memory batch is split and retried.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Sequence
from typing import Any

from gpuserve.backend import Backend
from gpuserve.context import ReplicaContext, bind
from gpuserve.outcomes import BatchResult, Encoder, Failure
from gpuserve.service import ApiSpec, ServiceSpec


def _encoded(outcome: Any, encode: Encoder) -> Any:
    """An item's encoded result, or its Failure."""
    if isinstance(outcome, Failure):
        return outcome
    try:
        return encode(outcome)
    except (TypeError, ValueError) as exc:
        return Failure(type(exc).__name__, f"its result cannot be encoded: {exc}")


def _encode_all(outcomes: list[Any], encoders: Sequence[Encoder]) -> list[Any]:
    """Every item's encoded result, or its Failure: in one C loop when one encoder fits all."""
    first = encoders[0]
    if encoders.count(first) == len(encoders) and not any(isinstance(o, Failure) for o in outcomes):
        try:
            return list(map(first, outcomes))
        except (TypeError, ValueError):  # some result cannot be encoded: find which, item by item
            pass
    return [_encoded(outcome, encode) for outcome, encode in zip(outcomes, encoders)]


class BatchShapeError(Exception):
    pass


class Replica:
    def __init__(self, spec: ServiceSpec, ctx: ReplicaContext, process_memory_fraction: float | None = None) -> None:
        self.spec = spec
        self.ctx = ctx
        # Frameworks cap memory per process, not per replica: the deployment
        # passes this process's whole share of the device.
        self.process_memory_fraction = process_memory_fraction
        self.instance: Any = None
        self._defaults: dict[str, dict[str, Any]] = {}

    @property
    def backend(self) -> Backend:
        return self.ctx.backend

    def _current_device(self) -> contextlib.AbstractContextManager[None]:
        planned = self.ctx.planned
        return self.backend.device_context(planned[0]) if planned else contextlib.nullcontext()

    def build(self) -> None:
        """Construct the user's class with this replica's device current."""
        bind(self.ctx)
        if self.process_memory_fraction is not None:
            self.backend.limit_memory(self.ctx.planned[0], self.process_memory_fraction)
        with self._current_device():
            self.instance = self.spec.cls()
        for api in self.spec.apis.values():
            params = list(inspect.signature(getattr(self.instance, api.method_name)).parameters.values())
            self._defaults[api.name] = {p.name: p.default for p in params if p.default is not p.empty}

    def run(self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]) -> BatchResult:
        """Run one batch; each item's result is encoded by its own encoder (its protocol's)."""
        api = self.spec.apis[api_name]
        with self._current_device():
            if not api.batchable:
                outcomes, exec_s = self._run_each(api, items)
                oom_ceiling = None
            else:
                outcomes = [None] * len(items)
                state: dict[str, Any] = {"exec_s": 0.0, "oom": None, "ran": []}
                self._run_range(api, items, 0, len(items), outcomes, state)
                exec_s, oom_ceiling = state["exec_s"], _ceiling(state["oom"], state["ran"])
            # Encoded here, beside the model: a tensor's copy to the host never
            # runs on the event loop, and never crosses a process boundary.
            encoded = _encode_all(outcomes, encoders)
        return BatchResult(encoded, exec_s, oom_ceiling)

    def _run_each(self, api: ApiSpec, items: Sequence[dict[str, Any]]) -> tuple[list[Any], float]:
        """One call per item: grouped only to share the hop to this executor."""
        method = getattr(self.instance, api.method_name)
        outcomes: list[Any] = []
        start = time.perf_counter()
        for item in items:
            try:
                outcomes.append(method(**item))
            except Exception as exc:  # this item alone fails, out of memory or not
                outcomes.append(Failure.of(exc))
        return outcomes, time.perf_counter() - start

    def _call(self, api: ApiSpec, items: Sequence[dict[str, Any]]) -> list[Any]:
        method = getattr(self.instance, api.method_name)
        defaults = self._defaults[api.name]
        kwargs = {
            p: [item[p] if p in item else defaults[p] for item in items]
            for p in api.params
        }
        results = method(**kwargs)
        count = len(results) if hasattr(results, "__len__") else None
        if count != len(items):
            raise BatchShapeError(
                f"batchable API {api.name!r} returned {count if count is not None else type(results).__name__} "
                f"results for a batch of {len(items)}; it must return one result per input"
            )
        return list(results)

    def _run_range(
        self, api: ApiSpec, items: Sequence[dict[str, Any]], lo: int, hi: int,
        outcomes: list[Any], state: dict[str, Any],
    ) -> None:
        start = time.perf_counter()
        try:
            outcomes[lo:hi] = self._call(api, items[lo:hi])
            state["ran"].append(hi - lo)
            return
        except BatchShapeError as exc:  # a contract error: splitting would only hide it
            outcomes[lo:hi] = [Failure.of(exc)] * (hi - lo)
            return
        except Exception as exc:
            if hi - lo == 1:
                outcomes[lo] = Failure.of(exc)
                return
            if self.backend.is_out_of_memory(exc):
                size = hi - lo
                state["oom"] = size if state["oom"] is None else min(state["oom"], size)
        finally:
            state["exec_s"] += time.perf_counter() - start
        mid = (lo + hi) // 2
        self._run_range(api, items, lo, mid, outcomes, state)
        self._run_range(api, items, mid, hi, outcomes, state)


def _ceiling(oom: int | None, ran: list[int]) -> int | None:
    """After an out-of-memory error at batch size `oom`: the largest smaller size that ran."""
    if oom is None:
        return None
    return max((size for size in ran if size < oom), default=max(1, oom // 2))
