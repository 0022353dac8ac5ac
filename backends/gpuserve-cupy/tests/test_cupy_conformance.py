"""gpuserve's contract for every backend, run against this one.

Without a CUDA driver only registration and viability run; the rest skip
with the reason `viable()` gives.
"""

from __future__ import annotations

import numpy as np
from gpuserve.testing import BackendConformance


class TestConformance(BackendConformance):
    backend_name = "cupy"

    def make_model(self) -> dict[str, np.ndarray]:
        return {"weight": np.eye(3, dtype=np.float32), "bias": np.zeros(3, dtype=np.float32)}

    def make_out_of_memory_error(self) -> BaseException:
        from cupy.cuda.memory import OutOfMemoryError

        return OutOfMemoryError(1024, 0)
