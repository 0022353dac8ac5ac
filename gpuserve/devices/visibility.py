"""CUDA's own rules for which devices a process sees, and in what order.

Used where the CUDA driver itself cannot be asked (a fake inventory, or no
`libcuda`), and to explain an empty result. The rules, as CUDA applies them:

- `CUDA_DEVICE_ORDER=PCI_BUS_ID` orders devices by PCI bus id; the default,
  `FASTEST_FIRST`, is the driver's own order.
- A GPU with MIG enabled is enumerated as its MIG instances (none if no
  instance was created).
- `CUDA_VISIBLE_DEVICES` unset: every device. Empty: none. Otherwise a comma
  separated list of ordinals (into the order above), `GPU-` UUIDs or `MIG-`
  ids, each in full or as a unique prefix. The list ends at the first invalid
  entry (an unknown ordinal, a prefix matching no device or several, a device
  already listed); the entries before it still count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from gpuserve.devices.source import NvmlGpu

_PCI = re.compile(r"^(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.([0-9a-fA-F]+)$")


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
    """The result of `CUDA_VISIBLE_DEVICES`: positions chosen, and why the list ended early."""

    positions: tuple[int, ...]
    stopped: str | None = None  # e.g. "entry '7': no device has ordinal 7 (ordinals are 0..1)"


def select_visible(value: str | None, uuids: Sequence[str]) -> Selection:
    """Apply a `CUDA_VISIBLE_DEVICES` value to devices in CUDA order (given by their UUIDs)."""
    if value is None:
        return Selection(tuple(range(len(uuids))))
    chosen: list[int] = []
    entries = [entry.strip() for entry in value.split(",")] if value.strip() else []
    for entry in entries:
        position = _resolve(entry, uuids)
        if isinstance(position, str):
            return Selection(tuple(chosen), f"entry {entry!r}: {position}")
        if position in chosen:
            return Selection(tuple(chosen), f"entry {entry!r}: {uuids[position]} is already listed")
        chosen.append(position)
    return Selection(tuple(chosen))


def _resolve(entry: str, uuids: Sequence[str]) -> int | str:
    """The position `entry` names, or why it names none."""
    if re.fullmatch(r"[0-9]+", entry):
        ordinal = int(entry)
        if ordinal < len(uuids):
            return ordinal
        valid = f"ordinals are 0..{len(uuids) - 1}" if uuids else "there are no devices"
        return f"no device has ordinal {ordinal} ({valid})"
    if entry.upper().startswith(("GPU-", "MIG-")):
        hits = [i for i, uuid in enumerate(uuids) if uuid.lower().startswith(entry.lower())]
        if len(hits) == 1:
            return hits[0]
        if hits:
            return f"ambiguous, it is a prefix of {', '.join(uuids[i] for i in hits)}"
        return f"no device has that UUID (devices: {', '.join(uuids) or 'none'})"
    return "not an ordinal, a GPU- UUID or a MIG- id"
