"""Write fake GPU inventories (the `GPUSERVE_FAKE_GPUS` file format)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

GiB = 1024**3


def fake_gpu(
    n: int,
    name: str = "NVIDIA H100 80GB HBM3",
    *,
    memory_gib: float = 80,
    used_gib: float = 0.5,
    utilization: int = 0,
    pci_bus: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One fake GPU; `n` makes its UUID and PCI bus id distinct."""
    bus = n + 1 if pci_bus is None else pci_bus
    return {
        "name": name,
        "uuid": f"GPU-{n:08x}-0000-4000-8000-{n:012x}",
        "memory_total": int(memory_gib * GiB),
        "memory_used": int(used_gib * GiB),
        "pci_bus_id": f"00000000:{bus:02X}:00.0",
        "utilization": utilization,
        "temperature": 30 + n,
        **extra,
    }


def write_fake_inventory(path: str | os.PathLike[str], gpus: Sequence[dict[str, Any]]) -> str:
    with open(path, "w") as f:
        json.dump(list(gpus), f)
    return os.fspath(path)
