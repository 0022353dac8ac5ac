"""`CupyBackend`: CuPy arrays on the CUDA devices gpuserve plans.

CuPy is imported on first use, never at import time, so the registry can list
this backend (and say why it is not viable) on a machine without CUDA.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from gpuserve.plugin import (
    Backend,
    BackendError,
    CapabilityError,
    Device,
    ImageRequirements,
    MemoryInfo,
    Viability,
    cuda_device_uuid,
    cuda_driver_problem,
)
from gpuserve_cupy import builds, inventory, placement

INSTALL_HINT = "pip install gpuserve-cupy[cuda12] (or gpuserve-cupy[cuda13] for CUDA 13)"
# Status 2 means "out of memory" in both CUDA APIs: cudaErrorMemoryAllocation, CUDA_ERROR_OUT_OF_MEMORY.
_OUT_OF_MEMORY = 2
_NO_DEVICE = 100  # cudaErrorNoDevice: a driver, but no GPU visible to this process


def _cupy() -> ModuleType:
    import cupy

    return cupy


class CupyBackend(Backend):
    name = "cupy"
    priority = 80
    uses_gpus = True

    @classmethod
    def viable(cls) -> Viability:
        if importlib.util.find_spec("cupy") is None:
            return Viability.no(f"cupy is not installed: {INSTALL_HINT}")
        problem = cuda_driver_problem()
        return Viability.no(problem) if problem else Viability.yes()

    @classmethod
    def cuda_build(cls) -> str | None:
        return builds.cuda_build()

    @classmethod
    def image_requirements(cls, cuda: str | None) -> ImageRequirements:
        return builds.image_requirements(cuda)

    def devices(self) -> list[Device]:
        runtime = _cupy().cuda.runtime
        return [
            inventory.describe(i, runtime.getDeviceProperties(i), cuda_device_uuid)
            for i in range(self._device_count())
        ]

    def _device_count(self) -> int:
        runtime = _cupy().cuda.runtime
        try:
            return runtime.getDeviceCount()
        except runtime.CUDARuntimeError as exc:
            if exc.status == _NO_DEVICE:
                return 0
            raise BackendError(f"backend 'cupy' cannot list CUDA devices: {exc}") from exc

    def _ordinal(self, device: Device) -> int:
        """`device`'s CUDA ordinal, checked to exist: never fall back to another device."""
        if not device.is_gpu:
            raise BackendError(f"backend 'cupy' expected a CUDA device, got {device.label}")
        count = self._device_count()
        if not 0 <= device.index < count:
            seen = f"cuda:0..cuda:{count - 1}" if count else "none"
            raise BackendError(
                f"backend 'cupy' has no device {device.label}: this process sees {count} "
                f"CUDA device(s) ({seen}); CUDA_VISIBLE_DEVICES decides which"
            )
        return device.index

    def native_device(self, device: Device) -> Any:
        if not device.is_gpu:
            return super().native_device(device)
        return _cupy().cuda.Device(self._ordinal(device))

    def place(self, obj: Any, device: Device) -> Any:
        cupy = _cupy()
        if not device.is_gpu:
            return placement.to_host(cupy, obj, self.name, device.label)
        with cupy.cuda.Device(self._ordinal(device)):
            return placement.to_gpu(cupy, obj, self.name, device.label)

    def distribute(self, model: Any, devices: Sequence[Device]) -> list[Any]:
        """One copy of `model` per device, in the order of `devices`."""
        if not devices:
            raise BackendError("backend 'cupy' cannot distribute over no devices: pass at least one")
        return [self.place(model, device) for device in devices]

    @contextlib.contextmanager
    def device_context(self, device: Device) -> Iterator[None]:
        if not device.is_gpu:  # host work needs no current device
            yield
            return
        with _cupy().cuda.Device(self._ordinal(device)):
            yield

    def limit_memory(self, device: Device, fraction: float) -> None:
        """Cap CuPy's default memory pool on `device` (other CUDA allocations are not counted)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"memory fraction {fraction!r} is invalid: expected a number in (0, 1]")
        if not device.is_gpu:
            raise CapabilityError(
                self.name, f"cap memory on {device.label}", "only a GPU's memory pool has a cap"
            )
        cupy = _cupy()
        with cupy.cuda.Device(self._ordinal(device)):
            cupy.get_default_memory_pool().set_limit(fraction=fraction)

    def memory(self, device: Device) -> MemoryInfo:
        """Device-wide use, every process's included (as nvidia-smi shows it)."""
        if not device.is_gpu:
            raise CapabilityError(self.name, f"report memory of {device.label}", "it reports GPU memory only")
        cupy = _cupy()
        with cupy.cuda.Device(self._ordinal(device)):
            free, total = cupy.cuda.runtime.memGetInfo()
        return MemoryInfo(used=total - free, total=total)

    def synchronize(self, device: Device) -> None:
        if device.is_gpu:  # host work is already synchronous
            _cupy().cuda.Device(self._ordinal(device)).synchronize()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        # cupy.cuda.memory.OutOfMemoryError (the memory pool's) is a MemoryError.
        if isinstance(exc, MemoryError):
            return True
        cupy = sys.modules.get("cupy")
        if cupy is None:  # CuPy never loaded: no CUDA error can have come from it
            return False
        errors = (cupy.cuda.runtime.CUDARuntimeError, cupy.cuda.driver.CUDADriverError)
        return isinstance(exc, errors) and getattr(exc, "status", None) == _OUT_OF_MEMORY
