"""The CUDA driver's own ordinal -> UUID list, asked in a child process.

The driver is the authority on what `cuda:N` means: it applies
`CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` (including FASTEST_FIRST, whose
order NVML cannot tell). Asking it initialises CUDA, which would freeze this
process's visibility for good, so the question runs in a child (`_cuda_probe.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

_PROBE = Path(__file__).with_name("_cuda_probe.py")
# cuInit on a machine with many GPUs and no persistence daemon can take seconds.
_TIMEOUT_S = 60


def driver_order(env: Mapping[str, str]) -> list[str] | None:
    """UUIDs of CUDA ordinals 0..n-1 under `env`; None when the driver cannot be asked."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", str(_PROBE)],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        answer = json.loads(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    uuids = answer.get("uuids") if isinstance(answer, dict) else None
    return [str(u) for u in uuids] if isinstance(uuids, list) else None


_CUDA_SUCCESS, _CUDA_ERROR_NOT_INITIALIZED = 0, 3


def cuda_initialized_here() -> bool | None:
    """Whether this process already initialised the CUDA driver; None without a driver.

    Asks `cuDeviceGetCount`, which answers NOT_INITIALIZED before `cuInit` and
    does not initialise anything itself. Once CUDA is initialised, it has read
    `CUDA_VISIBLE_DEVICES` for the life of the process.
    """
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    status = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if status == _CUDA_ERROR_NOT_INITIALIZED:
        return False
    return status == _CUDA_SUCCESS
