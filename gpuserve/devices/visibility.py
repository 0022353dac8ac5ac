"""CUDA's own rules for which devices a process sees, and in what order.

Used where the CUDA driver itself cannot be asked (a fake inventory, or no
`libcuda`), to tell a `CUDA_VISIBLE_DEVICES` list that CUDA cuts short, and
to find every device a worker process of its own could use. The rules, as
CUDA applies them:

- `CUDA_DEVICE_ORDER=PCI_BUS_ID` orders devices by PCI bus id; the default,
  `FASTEST_FIRST`, is the driver's own order.
- A GPU with MIG enabled is enumerated as its MIG devices (none if no
  instance was created).
- `CUDA_VISIBLE_DEVICES` unset: every device. Empty: none. Otherwise a comma
  separated list of ordinals (into the order above), `GPU-` UUIDs or `MIG-`
  ids, each in full or as a unique prefix, or a MIG device in the form of
  drivers before R470, `MIG-<GPU UUID in full>/<GPU instance id>/<compute
  instance id>`. The list ends at the first invalid entry (an unknown
  ordinal, a prefix matching no device or several, a device already listed);
  the entries before it still count.
- One process enumerates **one MIG device**, and no plain GPU beside it: of
  the devices the list selects, a process that may see a MIG device sees
  only the first MIG device. Source: NVIDIA's MIG user guide, "MIG Device
  Names", section "CUDA Device Enumeration" (MIG_GUIDE below): with CUDA 11
  (R450) and CUDA 12 (R525) drivers a CUDA process enumerates a single MIG
  device however many are visible, and does not enumerate a non-MIG GPU once
  it enumerates a MIG device on another GPU. The same page says that from
  R570 a process may enumerate one compute instance per GPU instance, and
  plain GPUs beside them. gpuserve plans by the older rule, which holds on
  every driver (one MIG device per worker process, nothing beside it), and
  takes what this very process enumerates from the driver wherever it can
  be asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from gpuserve.devices.source import NvmlGpu

_PCI = re.compile(r"^(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)$")
# The MIG form of drivers before R470: MIG-<parent GPU UUID>/<GPU instance>/<compute instance>.
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/([0-9]+)/([0-9]+)$", re.IGNORECASE)
MIG_GUIDE = "https://docs.nvidia.com/datacenter/tesla/mig-user-guide/mig-device-names.html"


def pci_key(bus_id: str) -> tuple[int, ...] | None:
    """A sortable key for a bus id ("00000000:1B:00.0" -> (0, 27, 0, 0)); None if malformed."""
    match = _PCI.match(bus_id.strip())
    if match is None:
        return None
    return tuple(int(part or "0", 16) for part in match.groups())


def cuda_units(gpus: Sequence[NvmlGpu], device_order: str | None) -> list[NvmlGpu]:
    """What CUDA enumerates, in `CUDA_DEVICE_ORDER` order, before `CUDA_VISIBLE_DEVICES`.

    `gpus` are in the driver's default order. CUDA treats any other value of
    `CUDA_DEVICE_ORDER` as the default.
    """
    if device_order == "PCI_BUS_ID":
        # Stable: MIG instances of one GPU share its bus id and keep their order.
        gpus = sorted(gpus, key=lambda gpu: pci_key(gpu.pci_bus_id) or ())
    return [unit for gpu in gpus for unit in (gpu.mig if gpu.mig_enabled else (gpu,))]


@attrs.frozen
class Selection:
    """The result of `CUDA_VISIBLE_DEVICES`: positions chosen, and where and why the list ended early."""

    positions: tuple[int, ...]
    stopped_entry: str | None = None  # the entry as written, e.g. "7"
    stopped_why: str | None = None  # e.g. "no device has ordinal 7 (ordinals are 0..1)"

    @property
    def stopped(self) -> str | None:
        """E.g. "entry '7': no device has ordinal 7 (ordinals are 0..1)"."""
        return None if self.stopped_entry is None else f"entry {self.stopped_entry!r}: {self.stopped_why}"


def select_visible(value: str | None, units: Sequence[NvmlGpu]) -> Selection:
    """Apply a `CUDA_VISIBLE_DEVICES` value to devices in CUDA order."""
    if value is None:
        return Selection(tuple(range(len(units))))
    chosen: list[int] = []
    entries = [entry.strip() for entry in value.split(",")] if value.strip() else []
    for entry in entries:
        position = _resolve(entry, units)
        if isinstance(position, str):
            return Selection(tuple(chosen), entry, position)
        if position in chosen:
            return Selection(tuple(chosen), entry, f"{units[position].uuid} is already listed")
        chosen.append(position)
    return Selection(tuple(chosen))


def one_process(units: Sequence[NvmlGpu]) -> tuple[int, ...]:
    """Positions in `units` (a selection, in order) that one CUDA process enumerates.

    Every plain GPU when none is a MIG device; otherwise the first MIG device
    alone (the MIG user guide's rule, see the module docstring).
    """
    first_mig = next((i for i, unit in enumerate(units) if unit.mig_parent is not None), None)
    return tuple(range(len(units))) if first_mig is None else (first_mig,)


def _resolve(entry: str, units: Sequence[NvmlGpu]) -> int | str:
    """The position `entry` names, or why it names none."""
    if re.fullmatch(r"[0-9]+", entry):
        ordinal = int(entry)
        if ordinal < len(units):
            return ordinal
        valid = f"ordinals are 0..{len(units) - 1}" if units else "there are no devices"
        return f"no device has ordinal {ordinal} ({valid})"
    legacy = _LEGACY_MIG.match(entry)
    if legacy is not None:
        return _resolve_legacy_mig(*legacy.groups(), units)
    if entry.upper().startswith(("GPU-", "MIG-")):
        hits = [i for i, unit in enumerate(units) if unit.uuid.lower().startswith(entry.lower())]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return f"ambiguous, it is a prefix of {', '.join(units[i].uuid for i in hits)}"
        return f"no device has that UUID (devices: {', '.join(u.uuid for u in units) or 'none'})"
    return "not an ordinal, a GPU- UUID, a MIG- id or MIG-<GPU UUID>/<GPU instance>/<compute instance>"


def _resolve_legacy_mig(parent: str, gpu_instance: str, compute_instance: str, units: Sequence[NvmlGpu]) -> int | str:
    wanted = (parent.lower(), int(gpu_instance), int(compute_instance))
    for position, unit in enumerate(units):
        if unit.mig_parent is not None and (
            (unit.mig_parent.lower(), unit.gpu_instance, unit.compute_instance) == wanted
        ):
            return position
    known = [
        f"MIG-{u.mig_parent}/{u.gpu_instance}/{u.compute_instance}"
        for u in units
        if u.mig_parent is not None and u.gpu_instance is not None
    ]
    return f"no MIG device has that GPU and instance ids (MIG devices: {', '.join(known) or 'none'})"
