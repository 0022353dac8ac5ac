"""Services for overload, hostile-client and access tests: quick calls, calls that hang, large inputs."""

from __future__ import annotations

import os
import time
from typing import Annotated

import numpy as np
from numpy.typing import NDArray
from pydantic import BeforeValidator

import gpuserve

FEATURES = 8


@gpuserve.service(backend="cpu")
class Guarded:
    @gpuserve.api
    def echo(self, value):
        return value

    @gpuserve.api
    def hang(self, seconds: float) -> float:
        time.sleep(seconds)  # holds its executor (with --instances-per-device 2, the other one serves)
        return seconds

    @gpuserve.api
    def size(self, blob: str) -> int:
        return len(blob)

    @gpuserve.api
    def leak(self, what: str) -> None:
        """Raises with a path and an environment value in its message, as careless code does."""
        secret = os.environ.get("HOSTILE_SECRET", "")
        raise FileNotFoundError(f"cannot open /srv/models/{what}/weights.bin (token {secret})")


@gpuserve.service(backend="cpu")
class Rows:
    @gpuserve.api(batchable=True, max_batch_size=64)
    def predict(self, x: Annotated[NDArray[np.float32], gpuserve.Shape(-1, FEATURES)]) -> list[float]:
        return x.sum(axis=1).tolist()

    @gpuserve.api
    def total(self, x: Annotated[NDArray[np.float32], gpuserve.Shape(-1, FEATURES)]) -> float:
        """One request of any number of rows: a large body that is valid."""
        return float(x.sum())


def _broken_check(value: object) -> object:
    raise RuntimeError("this check is broken")


@gpuserve.service(backend="cpu")
class BrokenCheck:
    """A parameter whose own check raises what no check should (not a ValueError): a bug in the service."""

    @gpuserve.api
    def take(self, value: Annotated[int, BeforeValidator(_broken_check)]) -> int:
        return value
