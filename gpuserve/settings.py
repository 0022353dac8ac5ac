"""Server settings: CLI flags, then `GPUSERVE_*` variables, then defaults.

Built once at the top (the CLI); nothing below reads `os.environ` for them.
"""

from __future__ import annotations

import enum
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


class OpsRoutes(str, enum.Enum):
    """Who may read the routes that describe the server: `/stats`, `/metrics`, `/docs`, `/openapi.json`."""

    OPEN = "open"  # anyone
    KEY = "key"  # whoever may call the APIs: the API key when one is set, else anyone
    OFF = "off"  # nobody: not served

    @classmethod
    def parse(cls, value: "OpsRoutes | str") -> "OpsRoutes":
        try:
            return cls(value)
        except ValueError:
            raise DeclarationError(
                f"ops_routes={value!r} is invalid: expected one of {', '.join(o.value for o in cls)}"
            ) from None


def _names(value: "str | tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """A comma-separated list (as a flag or a variable gives it) or a sequence, as lower-case names."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(name.strip().lower() for name in items if name.strip())


@attrs.frozen
class Settings:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=3000, validator=_port)
    backend: str | None = None
    # None: the service's own
    isolation: Isolation | None = attrs.field(default=None, converter=attrs.converters.optional(Isolation.parse))
    executors: str | None = None  # an executor kind (`gpuserve.executors`); None: the isolation's
    ray_address: str | None = None  # the Ray cluster for `executors="ray"`; None: Ray's own choice
    workers: int | None = attrs.field(default=None, validator=_positive)  # None: the service's own
    require_gpu: bool = False
    cpu_devices: int = attrs.field(default=1, validator=_positive)  # virtual CPU devices to plan on
    instances_per_device: int = attrs.field(default=1, validator=_positive)
    max_body_size: int = attrs.field(default=16 * MiB, validator=_positive)
    timeout: float = attrs.field(default=60.0, validator=_positive)  # default per-request deadline, seconds
    queue_size: int | None = attrs.field(default=None, validator=_positive)  # per API; None: derived
    drain_timeout: float = attrs.field(default=30.0, validator=_positive)  # the whole stop, from the signal
    access_log: bool = True  # one line per request (logger "gpuserve.access")
    max_streams: int = attrs.field(default=256, validator=_positive)  # open streams per streaming API
    stream_timeout: float = attrs.field(default=600.0, validator=_positive)  # a stream's whole duration, seconds
    stream_gap_timeout: float = attrs.field(default=60.0, validator=_positive)  # the longest silence between values
    # Seconds one call may run before its replica counts as stuck and is replaced; None: `timeout`.
    call_timeout: float | None = attrs.field(default=None, validator=_positive)
    # Builds of one replica that may fail in a row before the server counts as failed.
    max_build_failures: int = attrs.field(default=5, validator=_positive)
    exit_on_failure: bool = True  # a failed server exits non-zero (else it stays up, answering 503)
    # -- what clients may ask --------------------------------------------------------------
    max_request_timeout: float | None = attrs.field(default=None, validator=_positive)  # None: `timeout`
    off_loop_decode_size: int = attrs.field(default=1 * MiB, validator=_not_negative)  # 0: never
    # -- connections -----------------------------------------------------------------------
    backlog: int = attrs.field(default=2048, validator=_positive)  # the kernel caps it at somaxconn
    max_connections: int | None = attrs.field(default=None, validator=_positive)  # None: from the fd limit
    header_timeout: float = attrs.field(default=10.0, validator=_positive)  # a request's head, from its first byte
    body_timeout: float = attrs.field(default=30.0, validator=_positive)  # a request's body, from its head
    keepalive_timeout: float = attrs.field(default=75.0, validator=_positive)  # an idle connection
    # -- who may call what -----------------------------------------------------------------
    api_key: str | None = attrs.field(default=None, repr=False)
    api_key_file: str | None = None  # one key per line
    ops_routes: OpsRoutes = attrs.field(default=OpsRoutes.KEY, converter=OpsRoutes.parse)
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), converter=_names)  # empty: any Host
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    debug_errors: bool = False  # error bodies with tracebacks and unredacted messages
    # -- the CPU -----------------------------------------------------------------------------
    cpu_threads: int | None = attrs.field(default=None, validator=_not_negative)  # None: derived; 0: framework's

    def __attrs_post_init__(self) -> None:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise DeclarationError("TLS needs both ssl_certfile and ssl_keyfile (--ssl-certfile, --ssl-keyfile)")

    @property
    def request_timeout_cap(self) -> float:
        """The longest deadline a request may ask for with its own header."""
        return self.max_request_timeout if self.max_request_timeout is not None else self.timeout

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
