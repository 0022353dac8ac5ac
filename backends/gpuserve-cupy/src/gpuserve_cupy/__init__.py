"""CuPy backend for gpuserve.

Importing this package does not import CuPy: the registry loads every
installed backend to list it, and CuPy loads CUDA libraries on import.
"""

from gpuserve_cupy.backend import CupyBackend

__all__ = ["CupyBackend"]
