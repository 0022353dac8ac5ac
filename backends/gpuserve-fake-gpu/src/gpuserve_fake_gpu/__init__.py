"""`fake-gpu`: a gpuserve backend that serves on the GPUs of a fake inventory (tests and demos)."""

from gpuserve_fake_gpu.backend import FakeGpuBackend, applied_memory_caps, current_fake_device

__all__ = ["FakeGpuBackend", "applied_memory_caps", "current_fake_device"]
