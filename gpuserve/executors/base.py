"""What every executor offers the pool."""

from __future__ import annotations

import abc
import functools
from collections.abc import Sequence
from typing import Any

import attrs

from gpuserve.backend import Backend
from gpuserve.context import ReplicaContext
from gpuserve.devices.device import Device
from gpuserve.errors import GpuserveError
from gpuserve.outcomes import BatchResult, Encoder

STOP_GRACE_S = 10.0  # how long a replica still running user code may take to end, unless told otherwise


class ExecutorDied(GpuserveError):
    """The executor was lost while running a batch (its items fail; the pool restarts it)."""


@attrs.frozen
class Placement:
    """Which replica an executor holds and where: worker, instance, devices, memory cap."""

    worker_index: int
    instance: int
    devices: tuple[Device, ...]
    memory_limit: int | None = None  # this replica's planned cap, as gpuserve.context() reports it
    process_memory_fraction: float | None = None  # the cap its process applies (framework caps are per process)
    cpu_threads: int | None = None  # the framework's intra-op threads on the CPU (None: its own default)

    @property
    def key(self) -> str:
        where = ",".join(d.label for d in self.devices) or "cpu"
        return f"{where}#{self.worker_index}.{self.instance}"

    def context(self, backend: Backend) -> ReplicaContext:
        native = tuple(backend.native_device(d) for d in self.devices)
        return ReplicaContext(
            worker_index=self.worker_index,
            instance=self.instance,
            backend=backend,
            planned=self.devices,
            device=native[0] if native else None,
            devices=native,
            memory_limit=self.memory_limit,
            cpu_threads=self.cpu_threads,
        )


class Executor(abc.ABC):
    placement: Placement

    @functools.cached_property
    def key(self) -> str:
        return self.placement.key  # read per batch: built once

    @abc.abstractmethod
    async def start(self) -> None:
        """Build the replica; raises if the user's constructor fails."""

    @property
    def alive(self) -> bool:
        """False once the executor is known to be lost (cheap: the pool asks before each batch)."""
        return True

    @abc.abstractmethod
    async def run(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]
    ) -> BatchResult:
        """Run one batch, each item's result encoded by its encoder; raises `ExecutorDied` if lost."""

    def cancel(self, index: int) -> None:
        """Request `index` of the batch now running is gone (client left, deadline passed).

        An `async def` API's call for it is cancelled if it is still running;
        synchronous code cannot be interrupted, so by default nothing happens.
        """

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @abc.abstractmethod
    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """End the replica, waiting at most about `grace_s` for code still running.

        False when it could not be ended (a thread stuck in user code): the
        caller then knows the process must exit without waiting for it.
        """
