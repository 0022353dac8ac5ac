"""The built-in `cpu` backend: plain Python on the CPU, for any framework-free service."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gpuserve.backend import Backend, MemoryInfo
from gpuserve.devices.device import Device
from gpuserve.errors import CapabilityError


def host_memory() -> MemoryInfo:
    """This process's resident memory against the machine's RAM."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = page * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[1]) * page
    except OSError:
        import resource

        used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return MemoryInfo(used=used, total=total)


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
