"""`NumpyBackend`: NumPy models on the CPU, one copy per CPU device."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from gpuserve.plugin import CpuBackend, Device, Viability

GPU_HINT = "NumPy runs on the CPU only; for NumPy-style code on GPUs use the cupy backend"


def copy_arrays(obj: Any) -> Any:
    """`obj` with every array copied; dicts, lists and tuples rebuilt around the copies.

    Other objects already live in host memory and come back as they are.
    """
    import numpy  # imported on use, so that listing backends stays cheap

    if isinstance(obj, numpy.ndarray):
        return numpy.array(obj, copy=True)
    if isinstance(obj, dict):
        return {key: copy_arrays(value) for key, value in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple keeps its type
        return type(obj)._make(copy_arrays(item) for item in obj)
    if isinstance(obj, tuple):
        return tuple(copy_arrays(item) for item in obj)
    if isinstance(obj, list):
        return [copy_arrays(item) for item in obj]
    return obj


class NumpyBackend(CpuBackend):
    """CPU devices only (from `CpuBackend`); placing copies the model's arrays.

    `is_out_of_memory` is the inherited check for `MemoryError`, which NumPy's
    failed allocations (`_ArrayMemoryError`) are.
    """

    name = "numpy"
    priority = 10
    gpu_hint = GPU_HINT

    @classmethod
    def viable(cls) -> Viability:
        if importlib.util.find_spec("numpy") is None:
            return Viability.no("numpy is not installed: pip install gpuserve-numpy")
        return Viability.yes()

    def place(self, obj: Any, device: Device) -> Any:
        self.require_cpu(device, "place an object")
        return copy_arrays(obj)

    def distribute(self, model: Any, devices: Sequence[Device]) -> list[Any]:
        """One copy of `model` per CPU device, in the order of `devices`."""
        if not devices:
            raise ValueError("distribute needs at least one device, got none")
        return [self.place(model, device) for device in devices]
