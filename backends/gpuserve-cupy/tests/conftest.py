"""Tests marked `gpu` run only where CuPy can use a CUDA device."""

from __future__ import annotations

import pytest


def _cuda_devices() -> tuple[int, str]:
    """How many CUDA devices CuPy sees here, and why none when it sees none."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no cupy, no driver, no device: all mean "skip"
        return 0, f"{type(exc).__name__}: {exc}"
    return count, "getDeviceCount() returned 0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    count, why = _cuda_devices()
    if count:
        return
    skip = pytest.mark.skip(reason=f"no CUDA device usable by CuPy ({why})")
    for item in gpu_items:
        item.add_marker(skip)
