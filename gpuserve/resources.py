"""`Resources`: what one worker (replica) of a service needs.

`{"gpu": 1, "gpu_type": "nvidia-h100", "gpu_memory": "16GiB", "memory": "4GiB"}`:

- `gpu`: a whole number of GPUs, or a fraction 0 < gpu < 1 meaning a share of
  one GPU (several workers packed onto it, each capped at that share of its
  memory); 0 means CPU only.
- `gpu_type`: the GPU model in the forms users write (`nvidia-l4`,
  `nvidia-tesla-t4`, `nvidia-a10g`, ...), matched against NVML device names.
- `gpu_memory`: memory the worker needs free on each of its GPUs, as bytes or
  a string with a unit (`"16GiB"`, `"512MiB"`, `"16GB"`).
- `memory`: host memory (RAM) each replica needs (each of a worker's
  instances holds its own), in the same forms; a service on the CPU
  (`gpu: 0`) may declare it too.

Bad values raise `DeclarationError` naming the value and what is valid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from gpuserve.errors import DeclarationError

# Model part of a gpu_type ("nvidia-[tesla-]<model>") -> the token it is called
# in NVML device names. Names are matched token by token, so "a10" never
# matches "NVIDIA A100-SXM4-80GB" and "l4" never matches "NVIDIA L40S".
GPU_TYPES: Mapping[str, str] = {
    "k80": "K80",
    "p4": "P4",
    "p40": "P40",
    "p100": "P100",
    "v100": "V100",
    "t4": "T4",
    "a10": "A10",
    "a10g": "A10G",
    "a16": "A16",
    "a30": "A30",
    "a40": "A40",
    "a100": "A100",
    "l4": "L4",
    "l40": "L40",
    "l40s": "L40S",
    "h100": "H100",
    "h200": "H200",
    "gh200": "GH200",
    "b200": "B200",
    "rtx-a4000": "A4000",
    "rtx-a5000": "A5000",
    "rtx-a6000": "A6000",
    "rtx-4090": "4090",
}

_UNITS: Mapping[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_KEYS = ("gpu", "gpu_type", "gpu_memory", "memory")


def valid_gpu_types() -> list[str]:
    return [f"nvidia-{model}" for model in GPU_TYPES]


def _model_of(gpu_type: str) -> str | None:
    """The model part of a gpu_type ("nvidia-tesla-a100" -> "a100"); None if unknown."""
    if not gpu_type.startswith("nvidia-"):
        return None
    model = gpu_type.removeprefix("nvidia-").removeprefix("tesla-")
    return model if model in GPU_TYPES else None


def _name_tokens(device_name: str) -> set[str]:
    return set(re.split(r"[^A-Z0-9]+", device_name.upper()))


def parse_bytes(value: Any, *, what: str = "gpu_memory") -> int:
    """Bytes from an int or a string with a unit ("16GiB", "512MiB", "16GB")."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DeclarationError(
            f"{what}={value!r} is not a memory size: write bytes as an int, "
            f"or a string such as '16GiB', '512MiB' or '16GB'"
        )
    if isinstance(value, int):
        amount = value
    else:
        match = _QUANTITY.match(value)
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            raise DeclarationError(
                f"{what}={value!r} is not a memory size: write a number with one of the "
                f"units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. '16GiB'), or bytes as an int"
            )
        scaled = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(scaled):  # hundreds of digits: past any float, and any machine
            raise DeclarationError(f"{what}={value!r} is too large to be a memory size")
        amount = int(scaled)
    if amount <= 0:
        raise DeclarationError(f"{what}={value!r} must be more than 0 bytes")
    return amount


def format_bytes(amount: int) -> str:
    """Bytes as a short human figure in binary units: 42949672960 -> "40.0 GiB"."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(amount) >= size:
            return f"{amount / size:.1f} {unit}"
    return f"{amount} B"


def _check_gpu(instance: Resources, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DeclarationError(
            f"gpu={value!r} is not a number: write a whole number of GPUs (0, 1, 2, ...) "
            f"or a fraction of one GPU between 0 and 1 (e.g. 0.5)"
        )
    if not math.isfinite(value) or value < 0:
        raise DeclarationError(
            f"gpu={value!r} is invalid: write a whole number of GPUs (0, 1, 2, ...) "
            f"or a fraction of one GPU between 0 and 1 (e.g. 0.5)"
        )
    if value > 1 and value != int(value):
        raise DeclarationError(
            f"gpu={value!r} is invalid: above 1 only whole GPUs can be given "
            f"(write gpu={math.floor(value)} or gpu={math.ceil(value)}); a fraction must be below 1"
        )


def _normalise_gpu(value: Any) -> Any:
    # 2.0 means 2 whole GPUs; keep ints as ints so messages read "gpu=2".
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return int(value)
    return value


def _normalise_gpu_type(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _check_gpu_type(instance: Resources, attribute: attrs.Attribute, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or _model_of(value) is None:
        raise DeclarationError(
            f"gpu_type={value!r} is not a known GPU type; valid types: "
            f"{', '.join(valid_gpu_types())} (the 'nvidia-tesla-<model>' form is accepted too)"
        )


def _check_bytes(instance: Resources, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise DeclarationError(f"{attribute.name}={value!r} must be a positive number of bytes")


@attrs.frozen
class Resources:
    """What one worker needs. Build it with `Resources.parse` from a mapping."""

    gpu: float = attrs.field(default=0, converter=_normalise_gpu, validator=_check_gpu)
    gpu_type: str | None = attrs.field(
        default=None, converter=_normalise_gpu_type, validator=_check_gpu_type
    )
    gpu_memory: int | None = attrs.field(default=None, validator=_check_bytes)
    memory: int | None = attrs.field(default=None, validator=_check_bytes)  # host RAM, not a GPU's

    def __attrs_post_init__(self) -> None:
        if self.gpu == 0 and (self.gpu_type is not None or self.gpu_memory is not None):
            given = "gpu_type" if self.gpu_type is not None else "gpu_memory"
            raise DeclarationError(
                f"{given} is set but gpu=0 asks for no GPU: set gpu to 1 (or a fraction "
                f"such as 0.5), or drop {given}"
            )

    @classmethod
    def parse(cls, value: Mapping[str, Any] | Resources | None) -> Resources:
        if value is None:
            return cls()
        if isinstance(value, Resources):
            return value
        if not isinstance(value, Mapping):
            raise DeclarationError(
                f"resources={value!r} is not a mapping: write e.g. "
                f'{{"gpu": 1, "gpu_type": "nvidia-l4", "gpu_memory": "16GiB", "memory": "4GiB"}}'
            )
        unknown = sorted(str(key) for key in value if key not in _KEYS)
        if unknown:
            raise DeclarationError(
                f"unknown resources key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(_KEYS)}"
            )
        gpu_memory, memory = value.get("gpu_memory"), value.get("memory")
        return cls(
            gpu=value.get("gpu", 0),
            gpu_type=value.get("gpu_type"),
            gpu_memory=None if gpu_memory is None else parse_bytes(gpu_memory),
            memory=None if memory is None else parse_bytes(memory, what="memory"),
        )

    @property
    def is_fraction(self) -> bool:
        return 0 < self.gpu < 1

    def matches(self, device_name: str) -> bool:
        """Whether an NVML device name ("NVIDIA A100-SXM4-80GB") is of `gpu_type`."""
        if self.gpu_type is None:
            return True
        return GPU_TYPES[_model_of(self.gpu_type)] in _name_tokens(device_name)

