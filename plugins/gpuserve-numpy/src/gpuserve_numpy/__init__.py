"""An example third-party gpuserve backend: NumPy models on the CPU."""

from gpuserve_numpy.backend import NumpyBackend

__all__ = ["NumpyBackend"]
