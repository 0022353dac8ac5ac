"""Server settings: CLI flags, then `GPUSERVE_*` variables, then defaults.

Built once at the top (the CLI); nothing below reads `os.environ` for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from gpuserve.errors import DeclarationError
from gpuserve.service import Isolation

MiB = 1024 * 1024


def _check(predicate: Callable[[Any], bool], valid: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not predicate(value):
            raise DeclarationError(f"{attribute.name}={value!r} is invalid: expected {valid}")

    return validate


_port = _check(lambda v: 0 <= v <= 65535, "a port number 0..65535")
_positive = _check(lambda v: v > 0, "a number > 0")
_not_negative = _check(lambda v: v >= 0, "a number >= 0")


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=3000, validator=_port)
    backend: str | None = None
    # None: the service's own
    isolation: Isolation | None = attrs.field(default=None, converter=attrs.converters.optional(Isolation.parse))
    workers: int | None = attrs.field(default=None, validator=_positive)  # None: the service's own
    require_gpu: bool = False
    cpu_devices: int = attrs.field(default=1, validator=_positive)  # virtual CPU devices to plan on
    instances_per_device: int = attrs.field(default=1, validator=_positive)
    max_body_size: int = attrs.field(default=16 * MiB, validator=_positive)
    timeout: float = attrs.field(default=60.0, validator=_positive)  # default per-request deadline, seconds
    queue_size: int | None = attrs.field(default=None, validator=_positive)  # per API; None: derived
    drain_timeout: float = attrs.field(default=30.0, validator=_positive)  # the whole stop, from the signal
    access_log: bool = True  # one line per request (logger "gpuserve.access")
    # -- the CPU -----------------------------------------------------------------------------
    cpu_threads: int | None = attrs.field(default=None, validator=_not_negative)  # None: derived; 0: framework's

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], env: Mapping[str, str]) -> "Settings":
        """Each field from `flags` when given (not None), else `GPUSERVE_<FIELD>`, else default."""
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            flag = flags.get(field.name)
            if flag is not None:
                values[field.name] = flag
                continue
            raw = env.get(f"GPUSERVE_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _convert(field, raw)
        return cls(**values)


def _convert(field: attrs.Attribute, raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    name = f"GPUSERVE_{field.name.upper()}"
    try:
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        expected = {"bool": "true or false", "int": "a whole number", "float": "a number"}[kind.split(" ")[0]]
        raise DeclarationError(f"{name}={raw!r} is invalid: expected {expected}") from None
    return raw
