"""gpuserve's `gpu_type` names to Ray's `accelerator_type` names.

Ray names an NVIDIA GPU by the model token of its NVML name ("NVIDIA H100
80GB HBM3" -> "H100", "Tesla T4" -> "T4"); the RTX workstation cards keep
their "RTX-" prefix and GeForce cards their product line, as Ray's own
detection spells them.
"""

from __future__ import annotations

_SPELLED_APART = {
    "rtx-a4000": "RTX-A4000",
    "rtx-a5000": "RTX-A5000",
    "rtx-a6000": "RTX-A6000",
    "rtx-4090": "GeForce-RTX-4090",
}


def accelerator_type(gpu_type: str | None) -> str | None:
    """Ray's name for `gpu_type` (`"nvidia-h100"` -> `"H100"`); None when no type was declared."""
    if gpu_type is None:
        return None
    model = gpu_type.removeprefix("nvidia-").removeprefix("tesla-")
    return _SPELLED_APART.get(model, model.upper())
