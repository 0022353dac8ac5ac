"""`viable()` is cheap and says why the backend cannot be used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpuserve.plugin import cuda_driver_problem
from gpuserve_cupy import CupyBackend

no_driver = pytest.mark.skipif(
    not (cuda_driver_problem() or "").startswith("no CUDA driver"), reason="a CUDA driver is installed here"
)


@no_driver
def test_not_viable_without_a_driver() -> None:
    viability = CupyBackend.viable()
    assert not viability.ok
    assert viability.reason in ("no CUDA driver: libcuda.so.1 not found", "no CUDA driver: nvcuda.dll not found")


def test_not_viable_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "cupy", None)
    viability = CupyBackend.viable()
    assert not viability.ok
    assert viability.reason.startswith("cupy is not installed: pip install gpuserve-cupy[cuda12]")


def test_viable_imports_no_cupy() -> None:
    code = (
        "import sys\n"
        "from gpuserve_cupy import CupyBackend\n"
        "CupyBackend.viable()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupy_backends'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
