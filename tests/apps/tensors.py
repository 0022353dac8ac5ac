"""Services whose declarations are tensors: served over the KServe v2 protocol as well as natively."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray
from typing_extensions import TypedDict

import gpuserve
from gpuserve import Shape


class Scored(TypedDict):
    label: int
    scores: list[float]


@gpuserve.service(backend="cpu")
class Tensors:
    @gpuserve.api(batchable=True, max_batch_size=8)
    def scale(self, x: Annotated[NDArray[np.float32], Shape(-1, 4)]) -> Annotated[NDArray[np.float32], Shape(-1, 4)]:
        return x * 2

    @gpuserve.api(batchable=True, max_batch_size=8)
    def score(self, x: Annotated[NDArray[np.float32], Shape(-1, 3)]) -> list[Scored]:
        """One record per row: two outputs, `label` and `scores`."""
        return [{"label": int(row.argmax()), "scores": row.tolist()} for row in x]

    @gpuserve.api
    def count(self, ids: Annotated[NDArray[np.int64], Shape(-1)]) -> int:
        return int(ids.sum())

    @gpuserve.api
    def negate(self, flags: Annotated[NDArray[np.bool_], Shape(-1)]) -> Annotated[NDArray[np.bool_], Shape(-1)]:
        return ~flags

    @gpuserve.api(batchable=True, max_batch_size=8)
    def shout(self, text: list[str]) -> list[str]:
        return [t.upper() + "!" for t in text]

    @gpuserve.api
    def half(self, x: Annotated[NDArray[np.float16], Shape(-1)]) -> Annotated[NDArray[np.float16], Shape(-1)]:
        return x / 2

    @gpuserve.api
    def every(
        self,
        u8: Annotated[NDArray[np.uint8], Shape(-1)], u16: Annotated[NDArray[np.uint16], Shape(-1)],
        u32: Annotated[NDArray[np.uint32], Shape(-1)], u64: Annotated[NDArray[np.uint64], Shape(-1)],
        i8: Annotated[NDArray[np.int8], Shape(-1)], i16: Annotated[NDArray[np.int16], Shape(-1)],
        i32: Annotated[NDArray[np.int32], Shape(-1)], i64: Annotated[NDArray[np.int64], Shape(-1)],
        f32: Annotated[NDArray[np.float32], Shape(-1)], f64: Annotated[NDArray[np.float64], Shape(-1)],
        b: Annotated[NDArray[np.bool_], Shape(-1)], s: str,
    ) -> Scored:
        """Takes a tensor of every JSON datatype; answers what it saw."""
        total = sum(float(v.astype(np.float64).sum()) for v in (u8, u16, u32, i8, i16, i32, i64, f32, f64))
        return {"label": int(u64.max() % 1000) + int(b.sum()) + len(s), "scores": [total]}

    @gpuserve.api
    def fail(self, x: Annotated[NDArray[np.float32], Shape(-1)]) -> Annotated[NDArray[np.float32], Shape(-1)]:
        raise RuntimeError("this model always fails")

    @gpuserve.api
    def opaque(self, anything) -> dict:
        return {"got": anything}


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception has no text")


@gpuserve.service(backend="cpu")
class Sloppy:
    """Results and errors a careless service makes: what the server must survive, one request at a time."""

    @gpuserve.api
    def record(self, x: Annotated[NDArray[np.float32], Shape(3)]) -> Scored:
        """Leaves `scores` out when the first value is negative: a record the v2 encoder cannot frame."""
        return {"label": int(x.argmax()), **({} if x[0] < 0 else {"scores": x.tolist()})}  # type: ignore[typeddict-item]

    @gpuserve.api
    def unprintable(self) -> int:
        raise Unprintable()

    @gpuserve.api
    def whoami(self) -> int:
        import os

        return os.getpid()
