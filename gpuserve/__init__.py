"""gpuserve: serve models on GPUs over HTTP."""

from gpuserve.arrays import Shape
from gpuserve.context import ReplicaContext, context
from gpuserve.outcomes import END
from gpuserve.service import api, service

__version__ = "0.1.0"

__all__ = ["END", "ReplicaContext", "Shape", "__version__", "api", "context", "service"]
