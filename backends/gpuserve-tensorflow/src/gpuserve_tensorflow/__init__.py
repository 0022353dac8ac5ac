"""TensorFlow backend for gpuserve (entry point `gpuserve.backends: tensorflow`).

Importing this package does not import TensorFlow; the backend does, on first use.
"""

from gpuserve_tensorflow.backend import TensorFlowBackend
from gpuserve_tensorflow.mirrored import Mirrored

__all__ = ["Mirrored", "TensorFlowBackend"]
