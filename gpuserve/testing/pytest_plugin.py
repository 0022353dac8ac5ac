"""pytest plugin (entry point `pytest11`): the `gpu` marker and the `fake_gpus` fixture."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from gpuserve.plugin import FAKE_GPUS_ENV, discover
from gpuserve.testing.fake_inventory import write_fake_inventory


@functools.cache
def real_gpu_count() -> int:
    """GPUs seen through real NVML, whatever fake inventory a test sets."""
    env = {k: v for k, v in os.environ.items() if k != FAKE_GPUS_ENV}
    return len(discover(env).devices)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU; skipped when none is visible")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and real_gpu_count() == 0:
        pytest.skip("needs a real NVIDIA GPU; none is visible (NVML)")


@pytest.fixture
def fake_gpus(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[dict[str, Any]]], str]:
    """Install a fake inventory for this test: `fake_gpus([fake_gpu(0), fake_gpu(1)])`."""

    def install(gpus: Sequence[dict[str, Any]]) -> str:
        path = write_fake_inventory(tmp_path / "fake-gpus.json", gpus)
        monkeypatch.setenv(FAKE_GPUS_ENV, path)
        return path

    return install
