"""Where a run happened: machine, CPU, GPUs and driver, package versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from gpuserve.plugin import discover, nvidia_driver_versions

from benchmarks import ROOT

PACKAGES = (
    "gpuserve", "gpuserve-torch", "gpuserve-tensorflow", "gpuserve-cupy", "gpuserve-numpy",
    "aiohttp", "orjson", "uvloop", "attrs", "anyio", "numpy", "torch", "tensorflow", "tensorflow-cpu",
    "cupy-cuda12x", "cupy-cuda13x", "nvidia-ml-py", "matplotlib", "tqdm",
)


def collect(env: Mapping[str, str], loadgen: str) -> dict[str, Any]:
    inventory = discover(env)
    return {
        "machine": {
            "hostname": platform.node(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "memory_bytes": _memory_bytes(),
        },
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
        "gpus": [
            {"index": d.index, "label": d.label, "name": d.name, "uuid": d.uuid,
             "memory_total_bytes": d.memory_total, "pci_bus_id": d.pci_bus_id, "enumerated": d.enumerated}
            for d in inventory.devices
        ],
        "gpu_source": inventory.source,
        "no_gpu_reason": inventory.reason,
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "driver": nvidia_driver_versions(),
        "event_loop": _event_loop(),
        "loadgen": loadgen,
        "packages": {name: _version(name) for name in PACKAGES if _version(name) is not None},
        "git": _git(),
    }


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _event_loop() -> str:
    """The loop gpuserve's CLI and the baseline both run on."""
    version = _version("uvloop")
    return f"uvloop {version}" if version else "asyncio"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}
