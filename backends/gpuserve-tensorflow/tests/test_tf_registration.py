"""The backend is found through its entry point, cheaply, and says why it cannot run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from gpuserve.plugin import Backend

from gpuserve_tensorflow import TensorFlowBackend


def test_entry_point_resolves_to_the_backend() -> None:
    (ep,) = entry_points(group="gpuserve.backends", name="tensorflow")
    assert ep.value == "gpuserve_tensorflow:TensorFlowBackend"
    assert ep.dist is not None and ep.dist.metadata["Name"] == "gpuserve-tensorflow"
    cls = ep.load()
    assert cls is TensorFlowBackend
    assert issubclass(cls, Backend)
    assert (cls.name, cls.priority, cls.uses_gpus) == ("tensorflow", 90, True)


def test_importing_the_plugin_and_asking_viability_imports_no_tensorflow() -> None:
    code = (
        "import sys, gpuserve_tensorflow\n"
        "assert gpuserve_tensorflow.TensorFlowBackend.viable().ok\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_viable_where_tensorflow_is_installed() -> None:
    assert TensorFlowBackend.viable().ok


def test_not_viable_without_tensorflow_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    viability = TensorFlowBackend.viable()
    assert not viability.ok
    assert "tensorflow is not installed" in viability.reason
    assert "gpuserve-tensorflow[cpu]" in viability.reason
