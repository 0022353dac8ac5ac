"""The plugin is found the way gpuserve finds plugins: through its entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from gpuserve.plugin import Backend

from gpuserve_numpy import NumpyBackend
from gpuserve_numpy.plugin import setup


def test_backend_entry_point() -> None:
    (ep,) = entry_points(group="gpuserve.backends", name="numpy")
    assert ep.value == "gpuserve_numpy:NumpyBackend"
    assert ep.dist is not None and ep.dist.metadata["Name"] == "gpuserve-numpy"
    cls = ep.load()
    assert cls is NumpyBackend and issubclass(cls, Backend)
    assert (cls.name, cls.priority, cls.uses_gpus) == ("numpy", 10, False)


def test_app_hook_entry_point() -> None:
    (ep,) = entry_points(group="gpuserve.plugins", name="numpy-info")
    assert ep.value == "gpuserve_numpy.plugin:setup"
    assert ep.load() is setup
