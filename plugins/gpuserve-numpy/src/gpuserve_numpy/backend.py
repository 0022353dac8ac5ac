"""`NumpyBackend`: NumPy models on the CPU, one copy per CPU device."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from gpuserve.backend import Backend, MemoryInfo, Viability, host_memory
from gpuserve.devices import Device
from gpuserve.errors import CapabilityError

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


class NumpyBackend(Backend):
    """CPU devices only; `is_out_of_memory` is the inherited check for `MemoryError`,
    which NumPy's failed allocations (`_ArrayMemoryError`) are."""

    name = "numpy"
    priority = 10
    uses_gpus = False

    @classmethod
    def viable(cls) -> Viability:
        if importlib.util.find_spec("numpy") is None:
            return Viability.no("numpy is not installed: pip install gpuserve-numpy")
        return Viability.yes()

    def devices(self) -> list[Device]:
        return []  # no GPUs: the server plans this backend on CPU devices

    def _require_cpu(self, device: Device, what: str) -> None:
        if device.is_gpu:
            raise CapabilityError(self.name, f"{what} on {device.label}", GPU_HINT)

    def native_device(self, device: Device) -> str:
        self._require_cpu(device, "address a device")
        return "cpu"

    def place(self, obj: Any, device: Device) -> Any:
        self._require_cpu(device, "place an object")
        return copy_arrays(obj)

    def distribute(self, model: Any, devices: Sequence[Device]) -> list[Any]:
        """One copy of `model` per CPU device, in the order of `devices`."""
        if not devices:
            raise ValueError("distribute needs at least one device, got none")
        return [self.place(model, device) for device in devices]

    def memory(self, device: Device) -> MemoryInfo:
        self._require_cpu(device, "report memory")
        return host_memory()
