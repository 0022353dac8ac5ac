"""CUDA devices as the CUDA runtime (through CuPy) describes them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gpuserve.plugin import Device, format_uuid

_UUID_BYTES = 16


def pci_bus_id(props: Mapping[str, Any]) -> str:
    """NVML's spelling of a PCI address: `00000000:3B:00.0`."""
    return f"{props['pciDomainID']:08X}:{props['pciBusID']:02X}:{props['pciDeviceID']:02X}.0"


def describe(ordinal: int, props: Mapping[str, Any], driver_uuid: Callable[[int], bytes]) -> Device:
    """A `Device` from `cupy.cuda.runtime.getDeviceProperties(ordinal)`.

    CuPy hands the UUID over as a C string, cut at its first zero byte (or
    running on past its 16); a short one is asked of the driver instead.
    """
    raw = props["uuid"]
    raw = raw[:_UUID_BYTES] if len(raw) >= _UUID_BYTES else driver_uuid(ordinal)
    name = props["name"]
    return Device(
        index=ordinal,
        uuid=format_uuid(raw),
        name=name.decode(errors="replace") if isinstance(name, bytes) else str(name),
        kind="cuda",
        memory_total=int(props["totalGlobalMem"]),
        pci_bus_id=pci_bus_id(props),
    )
