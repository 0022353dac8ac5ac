"""gpuserve's contract for every backend, run against this one."""

from __future__ import annotations

import numpy as np
from gpuserve.testing import BackendConformance


class TestConformance(BackendConformance):
    backend_name = "numpy"

    def make_model(self) -> dict[str, np.ndarray]:
        return {"weight": np.eye(3), "bias": np.zeros(3)}

    def make_out_of_memory_error(self) -> BaseException:
        try:
            np.empty(2**62, dtype=np.uint8)  # 4 EiB: refused by the allocator at once
        except MemoryError as exc:
            return exc
        raise AssertionError("a 4 EiB allocation succeeded")
