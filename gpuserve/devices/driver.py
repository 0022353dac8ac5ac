"""The CUDA driver's own ordinal -> UUID list, asked in a child process.

The driver is the authority on what `cuda:N` means: it applies
`CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` (including FASTEST_FIRST, whose
order NVML cannot tell). Asking it initialises CUDA, which would freeze this
process's visibility for good, so the question runs in a child that executes
`libcuda.py` as a script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping

from gpuserve.devices import libcuda
from gpuserve.devices.uuids import format_uuid

# cuInit on a machine with many GPUs and no persistence daemon can take seconds.
_TIMEOUT_S = 60


def driver_order(env: Mapping[str, str]) -> list[str] | None:
    """UUIDs of CUDA ordinals 0..n-1 under `env`; None when the driver cannot be asked."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", libcuda.__file__],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
        answer = json.loads(done.stdout)
        raw = answer.get("uuids") if isinstance(answer, dict) else None
        return [format_uuid(bytes.fromhex(h)) for h in raw] if isinstance(raw, list) else None
    except (OSError, subprocess.TimeoutExpired, ValueError, TypeError):
        return None


def cuda_initialized_here() -> bool | None:
    """Whether this process already initialised CUDA (so its visibility is fixed); None without a driver."""
    return libcuda.initialized()
