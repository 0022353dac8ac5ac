"""The backend is found the way the registry finds it: through its entry point."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

from gpuserve.plugin import Backend

from gpuserve_cupy import CupyBackend


def test_entry_point_resolves_to_the_backend() -> None:
    (ep,) = entry_points(group="gpuserve.backends", name="cupy")
    assert ep.value == "gpuserve_cupy:CupyBackend"
    assert ep.dist is not None and ep.dist.metadata["Name"] == "gpuserve-cupy"
    cls = ep.load()
    assert cls is CupyBackend
    assert issubclass(cls, Backend)
    assert (cls.name, cls.priority, cls.uses_gpus) == ("cupy", 80, True)


def test_importing_the_plugin_imports_no_cupy() -> None:
    code = (
        "import sys, gpuserve_cupy\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
