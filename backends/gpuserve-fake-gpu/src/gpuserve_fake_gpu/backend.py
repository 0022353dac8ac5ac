"""`fake-gpu`: a backend for the fake inventory, so GPU plans can be tested without GPUs.

It pairs with `GPUSERVE_FAKE_GPUS` (see FAKE_GPUS.md): replicas are bound to
the fake GPUs exactly as they would be to real ones — planning, narrowing,
per-worker environments, `gpuserve.context()` — while the arithmetic runs on
the host. With `GPUSERVE_FAKE_GPUS` set and no backend named, `serve` and
`plan` choose it (no framework can run on simulated devices); otherwise ask
for it with `--backend fake-gpu`. `gpuserve.context().device` is the fake
GPU's label (`"cuda:0"`): framework code that moves tensors there needs a real
GPU, so services served here are framework-free, or CPU-only in their maths.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from gpuserve.plugin import FAKE_GPUS_ENV, Backend, BackendError, Device, MemoryInfo, Viability, discover

_current = threading.local()
_memory_caps: dict[str, float] = {}  # uuid -> fraction, as a framework's per-process cap


def applied_memory_caps() -> dict[str, float]:
    """The memory caps `limit_memory` applied in this process, by device UUID."""
    return dict(_memory_caps)


def current_fake_device() -> Device | None:
    """The fake GPU made current in this thread by `device_context`."""
    return getattr(_current, "device", None)


class FakeGpuBackend(Backend):
    name = "fake-gpu"
    priority = -100
    auto_select = False  # never chosen for real hardware ...
    serves_fake_gpus = True  # ... and the one choice for simulated hardware

    @classmethod
    def viable(cls) -> Viability:
        if not os.environ.get(FAKE_GPUS_ENV):
            return Viability.no(f"simulates GPUs for tests: set {FAKE_GPUS_ENV} to a fake inventory")
        return Viability.yes()

    def devices(self) -> list[Device]:
        # What one process enumerates, as CUDA would: a MIG device beside others is another process's.
        return list(discover(os.environ).enumerated)

    def _check(self, device: Device) -> Device:
        if device.is_gpu:
            visible = {d.uuid for d in self.devices()}
            if device.uuid not in visible:
                raise BackendError(f"{device.label} ({device.uuid}) is not visible in this process")
        return device

    def native_device(self, device: Device) -> str:
        return self._check(device).label

    def place(self, obj: Any, device: Device) -> Any:
        self._check(device)
        return obj

    def distribute(self, model: Any, devices: Sequence[Device]) -> Any:
        for device in devices:
            self._check(device)
        return model

    @contextlib.contextmanager
    def device_context(self, device: Device) -> Iterator[None]:
        previous = current_fake_device()
        _current.device = self._check(device)
        try:
            yield
        finally:
            _current.device = previous

    def limit_memory(self, device: Device, fraction: float) -> None:
        self._check(device)
        if not 0 < fraction <= 1:
            raise BackendError(f"memory fraction {fraction!r} is invalid: expected 0 < fraction <= 1")
        _memory_caps[device.uuid] = fraction

    def memory(self, device: Device) -> MemoryInfo:
        return MemoryInfo(used=self._check(device).memory_used, total=device.memory_total)
