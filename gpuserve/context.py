"""`gpuserve.context()`: what the current replica runs on."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import attrs

from gpuserve.devices.device import Device
from gpuserve.errors import GpuserveError

if TYPE_CHECKING:
    from gpuserve.backend import Backend


@attrs.frozen
class ReplicaContext:
    """The current replica's placement.

    `device` / `devices` are the backend's own handles (a `torch.device` for
    the torch backend), ready to pass to the framework; `planned` holds the
    planned devices as gpuserve `Device`s (ordinal, name, UUID).
    """

    worker_index: int
    instance: int
    backend: "Backend"
    planned: tuple[Device, ...]
    device: Any
    devices: tuple[Any, ...]
    memory_limit: int | None = None
    cpu_threads: int | None = None  # the framework's intra-op threads, for a replica on the CPU

    @property
    def backend_name(self) -> str:
        return self.backend.name


_local = threading.local()


def bind(ctx: ReplicaContext | None) -> None:
    """Make `ctx` the context of the calling thread (executors call this)."""
    _local.ctx = ctx


def context() -> ReplicaContext:
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        raise GpuserveError(
            "gpuserve.context() is only available inside a replica: in the service's "
            "__init__ or an API method while gpuserve runs it"
        )
    return ctx
