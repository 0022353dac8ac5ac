"""The core never imports a framework: frameworks belong to backends."""

import ast
import subprocess
import sys
from pathlib import Path

import gpuserve

FRAMEWORKS = {"torch", "tensorflow", "cupy", "jax", "keras"}
CORE = Path(gpuserve.__file__).parent


def test_no_module_of_the_core_imports_a_framework():
    offenders = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(CORE)}: {n}" for n in names if n.split(".")[0] in FRAMEWORKS]
    assert offenders == []


def test_importing_the_whole_core_loads_no_framework():
    code = (
        "import sys, pkgutil, importlib, gpuserve\n"
        "for m in pkgutil.walk_packages(gpuserve.__path__, 'gpuserve.'):\n"
        "    if not m.name.endswith(('__main__', 'executors.child', 'devices._cuda_probe')):\n"
        "        importlib.import_module(m.name)\n"
        f"print(sorted(set(sys.modules) & set({sorted(FRAMEWORKS)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
