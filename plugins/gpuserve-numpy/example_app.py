"""A tiny NumPy service on the `numpy` backend: the fixed linear map y = x @ W.

    python -m gpuserve serve example_app:Linear --backend numpy

from this folder, then `POST /predict` with `{"x": [[1, 2, 3]]}` (one or more rows).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from numpy.typing import NDArray

import gpuserve

INPUTS, OUTPUTS = 3, 2


def weights() -> np.ndarray:
    """W, the same on every run: halves, which float arithmetic holds exactly."""
    return np.arange(INPUTS * OUTPUTS, dtype=np.float64).reshape(INPUTS, OUTPUTS) / 2


@gpuserve.service(backend="numpy")
class Linear:
    def __init__(self) -> None:
        ctx = gpuserve.context()
        self.w = ctx.backend.place(weights(), ctx.planned[0])  # this replica's own copy

    @gpuserve.api(batchable=True, max_batch_size=32)
    def predict(self, x: Annotated[NDArray[np.float64], gpuserve.Shape(-1, INPUTS)]) -> list[list[float]]:
        # Batchable: `x` holds the rows of every queued request, as one array; one output row each.
        return (x @ self.w).tolist()
