"""A CuPy service: `python -m gpuserve serve app:CupyService`.

CuPy needs a CUDA GPU (there is no CPU fallback for a CuPy service). CuPy is
imported in `__init__`, so `gpuserve plan` reads the declaration anywhere.
"""

import gpuserve
import numpy as np

FEATURES = 16
WEIGHTS = np.linspace(-1.0, 1.0, FEATURES * 3, dtype=np.float32).reshape(FEATURES, 3)


@gpuserve.service(resources={"gpu": 1}, backend="cupy")
class CupyService:
    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        ctx = gpuserve.context()
        self.gpu = ctx.planned[0]
        self.weights = ctx.backend.place(WEIGHTS, self.gpu)  # a cupy.ndarray on this worker's GPU

    @gpuserve.api(batchable=True, max_batch_size=256)
    def project(self, x: list[list[float]]) -> list[dict]:
        rows = self.cupy.asarray(np.asarray(x, dtype=np.float32))
        out = self.cupy.asnumpy(self.cupy.tanh(rows @ self.weights))
        return [{"output": row.tolist(), "device": f"cuda:{self.weights.device.id}"} for row in out]
