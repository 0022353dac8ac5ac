"""Services written the way users write them: annotated, batched by rows, async, failing on demand.

Async calls journal what happens to them (start, finish, cancelled) to
`$TYPED_APPS_DIR/events.jsonl`, one JSON line each, so that a test can see a
coroutine being cancelled inside the replica, in a thread or in a worker process.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

import gpuserve

DIR = Path(os.environ.get("TYPED_APPS_DIR", "."))


def event(kind: str, tag: str) -> None:
    line = json.dumps({"event": kind, "tag": tag, "pid": os.getpid()}) + "\n"
    fd = os.open(DIR / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Point(BaseModel):
    x: float
    y: float
    label: Literal["a", "b"] = "a"


@gpuserve.service(backend="cpu")
class Typed:
    @gpuserve.api
    def add(self, a: int, b: int) -> int:
        return a + b

    @gpuserve.api
    def mirror(self, p: Point) -> Point:
        return Point(x=p.y, y=p.x, label=p.label)

    @gpuserve.api
    def choose(self, mode: Literal["fast", "exact"], limit: Optional[int] = None,
               weights: dict[str, float] | None = None) -> dict[str, Any]:
        return {"mode": mode, "limit": limit, "weights": weights}

    @gpuserve.api
    def untyped(self, value, extra=None):
        return {"value": value, "extra": extra}

    @gpuserve.api(batchable=True, max_batch_size=8)
    def lengths(self, sentences: list[str]) -> list[int]:
        return [len(s) for s in sentences]

    @gpuserve.api(batchable=True, max_batch_size=8)
    def scale(self, x: Annotated[NDArray[np.float32], gpuserve.Shape(-1, 3)], factor: list[float]) -> list[dict]:
        # One merged array for the whole batch: each row reports what the method was handed.
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        scaled = x * np.asarray(factor, dtype=np.float32)[:, None]
        return [{"row": row, "batch_rows": len(x)} for row in scaled.tolist()]

    @gpuserve.api
    def matrix(self, m: Annotated[NDArray[np.int16], gpuserve.Shape(2, -1)]) -> NDArray[np.int16]:
        return m.T

    @gpuserve.api
    async def wait(self, seconds: float, tag: str) -> str:
        event("start", tag)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            event("cancelled", tag)
            raise
        event("finish", tag)
        return tag

    @gpuserve.api(batchable=True, max_batch_size=16)
    async def double(self, x: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return [2 * v for v in x]

    @gpuserve.api
    def boom(self, tag: str) -> str:
        raise ValueError(f"boom {tag}")


@gpuserve.service(backend="cpu", isolation="process")
class TypedProcess(Typed):
    pass
