"""The fake backend keeps the contract every backend keeps, on a fake inventory."""

import pytest

from gpuserve.testing import BackendConformance, fake_gpu


class TestFakeGpuConformance(BackendConformance):
    backend_name = "fake-gpu"

    @pytest.fixture(autouse=True)
    def _inventory(self, fake_gpus):
        fake_gpus([fake_gpu(0), fake_gpu(1)])

    def make_model(self):
        return {"weights": [1.0, 2.0]}

    def make_out_of_memory_error(self):
        return MemoryError("fake device out of memory")
