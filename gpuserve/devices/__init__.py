"""Devices as facts: the NVML inventory and CUDA's visibility and ordering rules."""

from gpuserve.devices.device import Device
from gpuserve.devices.fake import FAKE_GPUS_ENV, FakeInventoryError, FakeSource
from gpuserve.devices.inventory import Inventory, discover, source_for
from gpuserve.devices.nvml import NvmlSource
from gpuserve.devices.source import GpuSource, NvmlGpu, SourceUnavailable
from gpuserve.devices.visibility import Selection, cuda_units, select_visible

__all__ = [
    "FAKE_GPUS_ENV",
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
    "source_for",
    "select_visible",
]
