"""The built-in `cpu` backend: plain Python on the CPU, and the base of any CPU-only backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from gpuserve.backend import Backend, MemoryInfo, host_memory
from gpuserve.devices.device import Device
from gpuserve.errors import CapabilityError


class CpuBackend(Backend):
    """Runs on CPU devices only; a GPU is refused with `CapabilityError`, never used silently.

    Subclass it for a CPU-only framework: set `name`, `priority` and `gpu_hint`
    (what to use instead on GPUs), and override `place` / `distribute` where
    the framework copies objects.
    """

    name = "cpu"
    priority = 0
    uses_gpus = False
    gpu_hint: ClassVar[str] = "it runs on the CPU only"

    def devices(self) -> list[Device]:
        return []

    def require_cpu(self, device: Device, what: str) -> None:
        if device.is_gpu:
            raise CapabilityError(self.name, f"{what} on {device.label}", self.gpu_hint)

    def native_device(self, device: Device) -> str:
        self.require_cpu(device, "address a device")
        return "cpu"

    def place(self, obj: Any, device: Device) -> Any:
        self.require_cpu(device, "place an object")
        return obj

    def distribute(self, model: Any, devices: Sequence[Device]) -> Any:
        for device in devices:
            self.require_cpu(device, "distribute a model")
        return model

    def memory(self, device: Device) -> MemoryInfo:
        self.require_cpu(device, "report memory")
        return host_memory()
