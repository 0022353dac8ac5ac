"""`discover(env)`: the devices this process sees, numbered as CUDA numbers them.

One path for real and fake hardware: a source (NVML, or the file named by
`GPUSERVE_FAKE_GPUS`) reports GPUs; CUDA ordinals come from the CUDA driver
where it can be asked (it applies `CUDA_VISIBLE_DEVICES` and
`CUDA_DEVICE_ORDER` itself), otherwise from CUDA's rules in `visibility`.
Each ordinal is joined to its NVML record by UUID, never by NVML index.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gpuserve.devices.device import Device
from gpuserve.devices.fake import FAKE_GPUS_ENV, FakeSource
from gpuserve.devices.nvml import NvmlSource
from gpuserve.devices.source import GpuSource, NvmlGpu, SourceUnavailable
from gpuserve.devices.uuids import uuid_key
from gpuserve.devices.visibility import cuda_units, select_visible


@attrs.frozen
class Inventory:
    """The visible devices, `index` = CUDA ordinal 0..k-1 under the environment read."""

    devices: tuple[Device, ...] = ()
    reason: str | None = None  # why `devices` is empty
    source: str = "nvml"  # "nvml" or "fake:<path>"


def source_for(env: Mapping[str, str]) -> GpuSource:
    path = env.get(FAKE_GPUS_ENV)
    return FakeSource(path) if path else NvmlSource()


def discover(env: Mapping[str, str]) -> Inventory:
    """Devices visible under `env` (pass `os.environ` from the top-level caller).

    No driver or no GPU gives an empty inventory with the reason. A fake file
    that cannot be used raises `FakeInventoryError`.
    """
    source = source_for(env)
    try:
        gpus = source.read()
    except SourceUnavailable as exc:
        return Inventory(reason=exc.reason, source=source.label)
    if not gpus:
        return Inventory(reason="no NVIDIA GPU found", source=source.label)

    visible = env.get("CUDA_VISIBLE_DEVICES")
    units = cuda_units(gpus, env.get("CUDA_DEVICE_ORDER"))
    selection = select_visible(visible, [unit.uuid for unit in units])
    driver = source.driver_order(env)
    if driver is None:
        devices = tuple(_device(o, units[p]) for o, p in enumerate(selection.positions))
    else:
        by_key = {uuid_key(unit.uuid): unit for gpu in gpus for unit in (gpu, *gpu.mig)}
        devices = tuple(
            _device(o, by_key[key]) if (key := uuid_key(uuid)) in by_key else _unreported(o, uuid)
            for o, uuid in enumerate(driver)
        )
    if devices:
        return Inventory(devices=devices, source=source.label)
    return Inventory(reason=_why_none(visible, selection.stopped, len(gpus)), source=source.label)


def _unreported(ordinal: int, uuid: str) -> Device:
    # The driver's ordinal stands even if NVML did not report the device:
    # dropping it would shift every later ordinal.
    return Device(index=ordinal, uuid=uuid, name="unknown (not reported by NVML)")


def _device(ordinal: int, unit: NvmlGpu) -> Device:
    return Device(
        index=ordinal,
        uuid=unit.uuid,
        name=unit.name,
        kind="cuda",
        nvml_index=unit.nvml_index,
        memory_total=unit.memory_total,
        memory_used=unit.memory_used,
        pci_bus_id=unit.pci_bus_id,
        utilization=unit.utilization,
        temperature=unit.temperature,
        mig_parent=unit.mig_parent,
    )


def _why_none(visible: str | None, stopped: str | None, gpus: int) -> str:
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is empty"
    if stopped is not None:
        return f"CUDA_VISIBLE_DEVICES={visible!r} selects no device ({stopped})"
    # E.g. MIG enabled with no instance created: NVML sees the GPU, CUDA cannot use it.
    where = "" if visible is None else f" under CUDA_VISIBLE_DEVICES={visible!r}"
    return f"CUDA enumerates no device{where}, although NVML reports {gpus} GPU(s)"
