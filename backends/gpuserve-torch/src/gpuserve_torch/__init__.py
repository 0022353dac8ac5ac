"""PyTorch backend for gpuserve."""

from gpuserve_torch.backend import TorchBackend

__all__ = ["TorchBackend"]
