"""Devices as facts: the NVML inventory and CUDA's visibility and ordering rules."""

from gpuserve.devices.device import Device
from gpuserve.devices.fake import FAKE_GPUS_ENV, FakeInventoryError, FakeSource
from gpuserve.devices.inventory import Inventory, discover, source_for
from gpuserve.devices.notices import warn_once
from gpuserve.devices.nvml import NvmlSource
from gpuserve.devices.source import GpuSource, NvmlGpu, SourceUnavailable
from gpuserve.devices.visibility import MIG_GUIDE, Selection, cuda_units, one_process, select_visible

__all__ = [
    "FAKE_GPUS_ENV",
    "MIG_GUIDE",
    "Device",
    "FakeInventoryError",
    "FakeSource",
    "GpuSource",
    "Inventory",
    "NvmlGpu",
    "NvmlSource",
    "Selection",
    "SourceUnavailable",
    "cuda_units",
    "discover",
    "one_process",
    "source_for",
    "select_visible",
    "warn_once",
]
