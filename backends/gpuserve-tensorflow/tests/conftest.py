"""Shared fixtures. One pytest process imports TensorFlow once; checks that
depend on TensorFlow's initialisation state run in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from gpuserve_tensorflow import TensorFlowBackend


def tensorflow_gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and tensorflow_gpu_count() == 0:
        skip = pytest.mark.skip(reason="TensorFlow sees no GPU here (tensorflow-cpu, or no CUDA driver)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def backend() -> TensorFlowBackend:
    return TensorFlowBackend()


@pytest.fixture
def fresh_python() -> Callable[[str], str]:
    """Run a script in a new interpreter (TensorFlow not yet initialised); return its stdout.

    The script fails the test by raising; its stderr is shown then.
    """

    def run(script: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"script failed ({done.returncode}):\n{done.stderr[-4000:]}"
        return done.stdout

    return run
