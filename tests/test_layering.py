"""The layering is a test: import contracts for the core, one public API for everything outside it."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = {"torch", "tensorflow", "cupy", "jax", "keras"}
# Code outside the core that must use only `gpuserve.plugin` (and the `gpuserve` package itself:
# `@gpuserve.service`, `gpuserve.context()`): first-party backends and executor kinds, the example plugins.
OUTSIDE = sorted(p for pattern in ("backends/*/src", "executors/*/src", "plugins/*/src") for p in ROOT.glob(pattern))


def test_import_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: layers, no HTTP below protocols, no frameworks."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def gpuserve_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [name for name in found if name.split(".")[0] == "gpuserve"]


def test_backends_executor_kinds_and_plugins_import_only_the_public_api():
    assert len(OUTSIDE) >= 6, OUTSIDE  # torch, tensorflow, cupy, fake-gpu, ray, numpy
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for folder in OUTSIDE
        for path in folder.rglob("*.py")
        for name in gpuserve_imports(path)
        if name not in ("gpuserve", "gpuserve.plugin")
    ]
    assert offenders == []


def test_importing_the_whole_core_loads_no_framework():
    code = (
        "import sys, pkgutil, importlib, gpuserve\n"
        "for m in pkgutil.walk_packages(gpuserve.__path__, 'gpuserve.'):\n"
        "    if not m.name.endswith(('__main__', 'executors.child')):\n"
        "        importlib.import_module(m.name)\n"
        f"print(sorted(set(sys.modules) & set({sorted(FRAMEWORKS)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

