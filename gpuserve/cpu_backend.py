"""The built-in `cpu` backend: plain Python on the CPU, for any framework-free service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpuserve.backend import Backend, MemoryInfo, host_memory
from gpuserve.devices.device import Device
from gpuserve.errors import CapabilityError


class CpuBackend(Backend):
    name = "cpu"
    priority = 0
    uses_gpus = False

    def devices(self) -> list[Device]:
        return []

    def _require_cpu(self, device: Device, what: str) -> None:
        if device.is_gpu:
            raise CapabilityError(self.name, f"{what} on {device.label}", "it runs on the CPU only")

    def native_device(self, device: Device) -> str:
        self._require_cpu(device, "address a device")
        return "cpu"

    def place(self, obj: Any, device: Device) -> Any:
        self._require_cpu(device, "place an object")
        return obj

    def distribute(self, model: Any, devices: Sequence[Device]) -> Any:
        for device in devices:
            self._require_cpu(device, "distribute a model")
        return model

    def memory(self, device: Device) -> MemoryInfo:
        self._require_cpu(device, "report memory")
        return host_memory()
