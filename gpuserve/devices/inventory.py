"""`discover(env)`: the devices this process sees, numbered as CUDA numbers them.

One path for real and fake hardware: a source (NVML, or the file named by
`GPUSERVE_FAKE_GPUS`) reports GPUs; CUDA ordinals come from the CUDA driver
where it can be asked (it applies `CUDA_VISIBLE_DEVICES` and
`CUDA_DEVICE_ORDER` itself), otherwise from CUDA's rules in `visibility`.
Each ordinal is joined to its NVML record by UUID, never by NVML index.

With MIG devices among those `CUDA_VISIBLE_DEVICES` selects, one process
enumerates only one of them (`visibility.one_process`); the inventory still
lists the others after the enumerated ones, for worker processes of their own.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from gpuserve.devices.device import Device
from gpuserve.devices.fake import FAKE_GPUS_ENV, FakeSource
from gpuserve.devices.nvml import NvmlSource
from gpuserve.devices.source import GpuSource, NvmlGpu, SourceUnavailable
from gpuserve.devices.uuids import uuid_key
from gpuserve.devices.visibility import Selection, cuda_units, one_process, select_visible


@attrs.frozen
class Inventory:
    """The devices this process may use, as CUDA numbers them under the environment read.

    First the devices CUDA enumerates in this process, `index` = CUDA ordinal
    0..k-1; then any that `CUDA_VISIBLE_DEVICES` lets it use but one process
    does not enumerate beside those (MIG: one MIG device per process, see
    `visibility`), marked `enumerated=False` and numbered on, each usable from
    a worker process of its own.
    """

    devices: tuple[Device, ...] = ()
    reason: str | None = None  # why `devices` is empty
    source: str = "nvml"  # "nvml" or "fake:<path>"
    cut_short: str | None = None  # CUDA_VISIBLE_DEVICES ends early: at which entry, why, what still counts

    @property
    def enumerated(self) -> tuple[Device, ...]:
        """What one process under this environment sees: `cuda:0`, `cuda:1`, …"""
        return tuple(d for d in self.devices if d.enumerated)


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
    selection = select_visible(visible, units)
    cut_short = _cut_short(visible, selection)
    selected = [units[p] for p in selection.positions]
    driver = source.driver_order(env)
    if driver is None:
        here: list[NvmlGpu | str] = [selected[p] for p in one_process(selected)]
    else:
        # The driver is the authority on what this process enumerates.
        by_key = {uuid_key(unit.uuid): unit for gpu in gpus for unit in (gpu, *gpu.mig)}
        here = [by_key.get(uuid_key(uuid), uuid) for uuid in driver]
    seen = {uuid_key(unit if isinstance(unit, str) else unit.uuid) for unit in here}
    # Only the MIG rule leaves a selected device out of this process; a worker process can still use it.
    elsewhere = [u for u in selected if uuid_key(u.uuid) not in seen] if any(u.mig_parent for u in selected) else []
    devices = tuple(
        _unreported(o, unit) if isinstance(unit, str) else _device(o, unit) for o, unit in enumerate(here)
    ) + tuple(_device(len(here) + n, unit, enumerated=False) for n, unit in enumerate(elsewhere))
    if devices:
        return Inventory(devices=devices, source=source.label, cut_short=cut_short)
    return Inventory(
        reason=_why_none(visible, selection.stopped, len(gpus)), source=source.label, cut_short=cut_short
    )


def _cut_short(visible: str | None, selection: Selection) -> str | None:
    """What to tell a user whose `CUDA_VISIBLE_DEVICES` CUDA does not read to its end."""
    if visible is None or selection.stopped_entry is None:
        return None
    kept = [entry.strip() for entry in visible.split(",")][: len(selection.positions)]
    if kept:
        counted = f"only {', '.join(map(repr, kept))} count{'s' if len(kept) == 1 else ''}"
    else:
        counted = "no device is visible"
    return (
        f"CUDA_VISIBLE_DEVICES={visible!r} is cut short: CUDA stops at entry {selection.stopped_entry!r} "
        f"({selection.stopped_why}) and ignores it and every entry after it, so {counted}"
    )


def _unreported(ordinal: int, uuid: str) -> Device:
    # The driver's ordinal stands even if NVML did not report the device:
    # dropping it would shift every later ordinal.
    return Device(index=ordinal, uuid=uuid, name="unknown (not reported by NVML)")


def _device(ordinal: int, unit: NvmlGpu, enumerated: bool = True) -> Device:
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
        enumerated=enumerated,
    )


def _why_none(visible: str | None, stopped: str | None, gpus: int) -> str:
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is empty"
    if stopped is not None:
        return f"CUDA_VISIBLE_DEVICES={visible!r} selects no device ({stopped})"
    # E.g. MIG enabled with no instance created: NVML sees the GPU, CUDA cannot use it.
    where = "" if visible is None else f" under CUDA_VISIBLE_DEVICES={visible!r}"
    return f"CUDA enumerates no device{where}, although NVML reports {gpus} GPU(s)"
