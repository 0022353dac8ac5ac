import torch

from gpuserve.testing import BackendConformance


class TestTorchConformance(BackendConformance):
    backend_name = "torch"

    def make_model(self):
        return torch.nn.Linear(4, 2)

    def make_out_of_memory_error(self):
        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
