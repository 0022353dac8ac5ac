"""What a GPU source reports, and the interface every source implements.

A source is where the facts about GPUs come from: real NVML (`nvml.py`) or a
JSON file standing in for it (`fake.py`). Both hand the same records to the
same code (`inventory.py`), which applies CUDA's visibility and ordering rules
and builds `Device`s, so everything above runs identically on either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs


@attrs.frozen
class NvmlGpu:
    """One GPU, or one MIG instance of a GPU, as NVML describes it."""

    nvml_index: int  # NVML's numbering; a MIG instance carries its parent's
    uuid: str  # "GPU-…" or "MIG-…"
    name: str
    memory_total: int
    memory_used: int
    pci_bus_id: str
    utilization: int | None = None
    temperature: int | None = None
    mig_enabled: bool = False  # CUDA then sees this GPU only through its instances
    mig: tuple[NvmlGpu, ...] = ()
    mig_parent: str | None = None  # the parent's uuid, on a MIG instance
    # A MIG instance's ids on its GPU (what `MIG-<GPU UUID>/<gi>/<ci>` names); None where unknown.
    gpu_instance: int | None = None
    compute_instance: int | None = None


class SourceUnavailable(Exception):
    """The source cannot report GPUs here (no library, no driver); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GpuSource(Protocol):
    label: str  # "nvml" or "fake:<path>", shown to users

    def read(self) -> list[NvmlGpu]:
        """Every GPU, listed in the driver's default (FASTEST_FIRST) order as far as known.

        Raises `SourceUnavailable` when there is no way to ask.
        """

    def driver_order(self, env: Mapping[str, str]) -> list[str] | None:
        """UUIDs of CUDA ordinals 0..n-1 as the CUDA driver enumerates them under `env`.

        The driver has applied `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER`
        itself. None when there is no driver to ask.
        """
