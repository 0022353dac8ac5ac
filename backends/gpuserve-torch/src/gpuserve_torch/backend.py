"""`TorchBackend`: how PyTorch uses the devices gpuserve planned.

torch is imported lazily so that listing backends stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from gpuserve.plugin import (
    Backend,
    BackendError,
    CapabilityError,
    Device,
    ImageRequirements,
    MemoryInfo,
    Viability,
    host_memory,
    same_device,
)
from gpuserve_torch import builds

log = logging.getLogger(__name__)


def _torch() -> Any:
    import torch

    return torch


class TorchBackend(Backend):
    name = "torch"
    priority = 100

    @classmethod
    def viable(cls) -> Viability:
        if importlib.util.find_spec("torch") is None:
            return Viability.no("torch is not installed: pip install gpuserve-torch")
        return Viability.yes()

    @classmethod
    def cuda_build(cls) -> str | None:
        return builds.cuda_of(builds.installed())

    @classmethod
    def image_requirements(cls, cuda: str | None) -> ImageRequirements:
        return builds.image_requirements(cuda)

    def devices(self) -> list[Device]:
        torch = _torch()
        if not torch.cuda.is_available():
            return []
        found = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            uuid = str(getattr(props, "uuid", ""))
            found.append(Device(
                index=i,
                uuid=uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}",
                name=props.name,
                memory_total=props.total_memory,
                pci_bus_id=f"{getattr(props, 'pci_domain_id', 0):08x}:{getattr(props, 'pci_bus_id', 0):02x}:"
                f"{getattr(props, 'pci_device_id', 0):02x}.0",
            ))
        return found

    def limit_visibility(self, devices: Sequence[Device]) -> None:
        """Check that torch's `cuda:N` are exactly the planned GPUs.

        The server has set `CUDA_VISIBLE_DEVICES`; torch reads it when CUDA
        initialises. A CPU-only build cannot serve a GPU plan.
        """
        torch = _torch()
        gpus = [d for d in devices if d.is_gpu]
        if gpus and not torch.backends.cuda.is_built():
            raise BackendError(
                f"the plan uses {len(gpus)} GPU(s) but this torch ({torch.__version__}) was built "
                "without CUDA; install a CUDA build of torch, or pass --backend cpu / resources "
                "without 'gpu' to serve on the CPU"
            )
        if not gpus:
            return
        seen = {d.index: d.uuid for d in self.devices()}
        for device in gpus:
            if not same_device(seen.get(device.index, ""), device.uuid):
                raise BackendError(
                    f"torch's {device.label} is {seen.get(device.index) or 'absent'}, but the plan put "
                    f"{device.uuid} ({device.name}) there: CUDA saw another CUDA_VISIBLE_DEVICES"
                )

    def _check(self, device: Device) -> Any:
        torch = _torch()
        if not device.is_gpu:
            return torch.device("cpu")
        if not torch.backends.cuda.is_built():
            raise BackendError(
                f"{device.label} ({device.name}) was planned but torch {torch.__version__} has no CUDA; "
                "install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index >= count:
            raise BackendError(f"{device.label} does not exist here: torch sees {count} CUDA device(s)")
        return torch.device("cuda", device.index)

    def native_device(self, device: Device) -> Any:
        return self._check(device)

    def place(self, obj: Any, device: Device) -> Any:
        return obj.to(self._check(device))

    def distribute(self, model: Any, devices: Sequence[Device]) -> Any:
        if len(devices) == 1:
            return self.place(model, devices[0])
        if not all(d.is_gpu for d in devices):
            raise CapabilityError(self.name, "distribute over CPU devices", "DataParallel needs GPUs")
        torch = _torch()
        targets = [self._check(d) for d in devices]
        return torch.nn.DataParallel(model.to(targets[0]), device_ids=[t.index for t in targets])

    @contextlib.contextmanager
    def device_context(self, device: Device) -> Iterator[None]:
        target = self._check(device)
        if target.type == "cpu":
            yield
            return
        with _torch().cuda.device(target):
            yield

    def limit_memory(self, device: Device, fraction: float) -> None:
        target = self._check(device)
        if target.type == "cpu":
            raise CapabilityError(self.name, "cap CPU memory")
        _torch().cuda.set_per_process_memory_fraction(fraction, target)

    def memory(self, device: Device) -> MemoryInfo:
        target = self._check(device)
        if target.type == "cpu":
            return host_memory()
        free, total = _torch().cuda.mem_get_info(target)
        return MemoryInfo(used=total - free, total=total)

    def set_cpu_threads(self, threads: int) -> None:
        """torch's intra-op threads for CPU work in this process (`torch.set_num_threads`)."""
        _torch().set_num_threads(threads)

    def synchronize(self, device: Device) -> None:
        target = self._check(device)
        if target.type == "cuda":
            _torch().cuda.synchronize(target)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        torch = _torch()
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
        return isinstance(exc, MemoryError)
