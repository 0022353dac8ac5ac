"""The real GPU source: NVML through `nvidia-ml-py` (module `pynvml`).

NVML does not initialise CUDA, so reading it leaves this process free to
narrow its visibility later. Its indices are not CUDA ordinals; the inventory
joins the two by UUID.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from gpuserve.devices.driver import driver_order
from gpuserve.devices.source import NvmlGpu, SourceUnavailable


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py versions return bytes.
    return value.decode() if isinstance(value, bytes) else value


def _init_failure(pynvml: Any, exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "NVML library not found (no NVIDIA driver installed)"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "no NVIDIA driver loaded"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no permission to use the NVIDIA driver"
    return f"NVML failed to initialise: {exc}"


class NvmlSource:
    """Reads every GPU NVML reports, with MIG instances where MIG is enabled."""

    label = "nvml"

    def read(self) -> list[NvmlGpu]:
        try:
            import pynvml
        except ImportError:
            raise SourceUnavailable("nvidia-ml-py (module pynvml) is not installed") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise SourceUnavailable(_init_failure(pynvml, exc)) from None
        try:
            # Without the driver's word, NVML's order stands for FASTEST_FIRST.
            return [
                self._gpu(pynvml, index, pynvml.nvmlDeviceGetHandleByIndex(index))
                for index in range(pynvml.nvmlDeviceGetCount())
            ]
        except pynvml.NVMLError as exc:
            raise SourceUnavailable(f"NVML failed reading the GPUs: {exc}") from None
        finally:
            pynvml.nvmlShutdown()

    def driver_order(self, env: Mapping[str, str]) -> list[str] | None:
        return driver_order(env)

    def _gpu(self, pynvml: Any, index: int, handle: Any) -> NvmlGpu:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        gpu = NvmlGpu(
            nvml_index=index,
            uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
            name=_text(pynvml.nvmlDeviceGetName(handle)),
            memory_total=int(memory.total),
            memory_used=int(memory.used),
            pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
            utilization=self._optional(pynvml, lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            temperature=self._optional(
                pynvml, lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            ),
        )
        mode = self._optional(pynvml, lambda: pynvml.nvmlDeviceGetMigMode(handle)[0])
        if mode != pynvml.NVML_DEVICE_MIG_ENABLE:
            return gpu
        return attrs.evolve(gpu, mig_enabled=True, mig=self._mig_instances(pynvml, handle, gpu))

    def _mig_instances(self, pynvml: Any, handle: Any, parent: NvmlGpu) -> tuple[NvmlGpu, ...]:
        instances = []
        for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_NotFound:
                continue  # an empty slot
            memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
            instances.append(
                NvmlGpu(
                    nvml_index=parent.nvml_index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(mig)),
                    name=_text(pynvml.nvmlDeviceGetName(mig)),
                    memory_total=int(memory.total),
                    memory_used=int(memory.used),
                    pci_bus_id=parent.pci_bus_id,
                    mig_parent=parent.uuid,
                    gpu_instance=self._optional(pynvml, lambda: pynvml.nvmlDeviceGetGpuInstanceId(mig)),
                    compute_instance=self._optional(pynvml, lambda: pynvml.nvmlDeviceGetComputeInstanceId(mig)),
                )
            )
        return tuple(instances)

    @staticmethod
    def _optional(pynvml: Any, read: Any) -> Any:
        """A reading some GPUs do not support (utilization, temperature, MIG mode and ids)."""
        try:
            return read()
        except pynvml.NVMLError:
            return None


def driver_versions() -> dict[str, str] | None:
    """The NVIDIA driver's version and the CUDA version it supports (`{"version": "570.86.15", "cuda": "12.8"}`),
    from NVML; None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver: nothing to describe
        return None
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {"version": _text(pynvml.nvmlSystemGetDriverVersion()), "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}"}
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
