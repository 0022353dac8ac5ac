"""`@service` and `@api`: declarations, validated when the class is defined."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

import attrs

from gpuserve.errors import DeclarationError
from gpuserve.resources import Resources
from gpuserve.signature import Signature, signature_of

_ROUTE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
# Routes of the server, and "replicas": `/stats` holds every API by name and the replicas under that key.
_RESERVED_ROUTES = frozenset({"livez", "readyz", "stats", "metrics", "docs", "v2", "replicas"})

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class Isolation(str, enum.Enum):
    """Where a replica runs: a thread of the server process, or a process of its own."""

    THREAD = "thread"
    PROCESS = "process"

    @classmethod
    def parse(cls, value: object) -> "Isolation":
        try:
            return cls(value)
        except ValueError:
            valid = " or ".join(repr(member.value) for member in cls)
            raise DeclarationError(f"isolation={value!r} is invalid: expected {valid}") from None


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeclarationError(f"{name}={value!r} is invalid: expected a whole number >= 1")
    return value


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DeclarationError(f"{name}={value!r} is invalid: expected a number > 0")
    return float(value)


@attrs.frozen
class ApiSpec:
    """One HTTP API of a service: `POST /<name>` calls `method_name`.

    `max_batch_size` counts rows: a batchable API's request carries 1..max_batch_size
    of them (see `gpuserve.signature`), a batchable stream's exactly one; an API
    that is not batchable takes one row.
    """

    name: str
    method_name: str
    batchable: bool
    max_batch_size: int
    max_latency_ms: float
    signature: Signature
    # Seconds one call may run before the watchdog replaces its replica; None: the server's --call-timeout.
    call_timeout: float | None = None

    @property
    def params(self) -> tuple[str, ...]:
        return self.signature.names

    @property
    def required(self) -> frozenset[str]:
        return self.signature.required

    @property
    def is_async(self) -> bool:
        return self.signature.is_async

    @property
    def streams(self) -> bool:
        return self.signature.streams

    @property
    def rows_per_request(self) -> int:
        """The most rows one request may carry."""
        return 1 if self.streams else self.max_batch_size


@attrs.frozen
class ServiceSpec:
    """What `@service` recorded about a class."""

    cls: type
    name: str
    resources: Resources
    workers: int
    isolation: Isolation | None  # None: threads, unless fractional workers share a GPU
    backend: str | None
    apis: Mapping[str, ApiSpec]

    def api(self, name: str) -> ApiSpec:
        return self.apis[name]


@overload
def api(func: F) -> F: ...
@overload
def api(
    *,
    name: str | None = None,
    batchable: bool = False,
    max_batch_size: int = 64,
    max_latency_ms: float = 60_000,
    call_timeout: float | None = None,
) -> Callable[[F], F]: ...


def api(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    batchable: bool = False,
    max_batch_size: int = 64,
    max_latency_ms: float = 60_000,
    call_timeout: float | None = None,
) -> Any:
    """Expose a method as `POST /<name>`; `async def` methods run on the replica's own event loop.

    Annotations are the contract (`gpuserve.signature`). A batchable API's
    parameters carry a leading batch dimension: each request sends 1 to
    `max_batch_size` rows, the method receives the rows of every queued request
    merged along dimension 0 (a list, or one array for array parameters) and
    returns one result per row; each request gets back its own rows.
    `max_latency_ms` bounds time in queue plus predicted execution.
    `call_timeout` (seconds) is how long one call may run before it counts as
    stuck: its requests fail and its replica is replaced (default: the server's
    `--call-timeout`, else its `--timeout`).

    A generator method streams: each value it yields is sent as soon as it is
    yielded (`gpuserve.protocols.streaming`). A batchable one receives one row
    per request and yields, per step, one value per row still taking part, or
    `gpuserve.END` for a row whose stream is over; the yield expression then
    evaluates to the positions, in what it yielded, of the rows that take part
    in the next step (rows that ended, or whose client left, drop out).
    """
    if not isinstance(batchable, bool):
        raise DeclarationError(f"batchable={batchable!r} is invalid: expected True or False")
    size = _positive_int("max_batch_size", max_batch_size)
    latency = _positive_number("max_latency_ms", max_latency_ms)
    limit = None if call_timeout is None else _positive_number("call_timeout", call_timeout)

    def mark(f: F) -> F:
        if not callable(f):
            raise DeclarationError(f"@gpuserve.api decorates a method, not {f!r}")
        route = name if name is not None else f.__name__
        if not isinstance(route, str) or not _ROUTE_NAME.match(route) or route in _RESERVED_ROUTES:
            raise DeclarationError(
                f"API name {route!r} is invalid: expected letters, digits, '_' or '-', "
                f"not one of the reserved names {sorted(_RESERVED_ROUTES)}"
            )
        f.__gpuserve_api__ = ApiSpec(  # type: ignore[attr-defined]
            name=route,
            method_name=f.__name__,
            batchable=batchable,
            max_batch_size=size if batchable else 1,
            max_latency_ms=latency,
            signature=signature_of(f, batchable, size),
            call_timeout=limit,
        )
        return f

    return mark(func) if func is not None else mark


def service(
    cls: type[T] | None = None,
    *,
    name: str | None = None,
    resources: Mapping[str, Any] | Resources | None = None,
    workers: int = 1,
    isolation: Isolation | str | None = None,
    backend: str | None = None,
) -> Any:
    """Declare a class as a gpuserve service.

    `resources` describe one worker (replica); `workers` replicas are built.
    `isolation="process"` runs each replica in its own process that sees only
    its own GPUs (as `cuda:0..k-1`); `"thread"` runs replicas as threads of the
    server. Left out, threads, unless fractional workers share a GPU: memory
    caps are per process, so those run as processes.
    """
    parsed = Resources.parse(resources)
    count = _positive_int("workers", workers)
    declared_isolation = None if isolation is None else Isolation.parse(isolation)
    if backend is not None and (not isinstance(backend, str) or not backend):
        raise DeclarationError(f"backend={backend!r} is invalid: expected a backend name such as 'torch'")

    def declare(c: type[T]) -> type[T]:
        if not isinstance(c, type):
            raise DeclarationError(f"@gpuserve.service decorates a class, not {c!r}")
        apis: dict[str, ApiSpec] = {}
        for attr in dir(c):
            spec = getattr(getattr(c, attr, None), "__gpuserve_api__", None)
            if isinstance(spec, ApiSpec):
                if spec.name in apis:
                    raise DeclarationError(f"two APIs of {c.__name__} are both named {spec.name!r}")
                apis[spec.name] = spec
        if not apis:
            raise DeclarationError(
                f"service {c.__name__} has no APIs: mark at least one method with @gpuserve.api"
            )
        c.__gpuserve_service__ = ServiceSpec(  # type: ignore[attr-defined]
            cls=c,
            name=name or c.__name__,
            resources=parsed,
            workers=count,
            isolation=declared_isolation,
            backend=backend,
            apis=apis,
        )
        return c

    return declare(cls) if cls is not None else declare


def spec_of(obj: object) -> ServiceSpec:
    spec = getattr(obj, "__gpuserve_service__", None)
    if not isinstance(spec, ServiceSpec):
        raise DeclarationError(f"{obj!r} is not a gpuserve service: decorate its class with @gpuserve.service")
    return spec
