"""What every executor offers the pool."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from gpuserve.backend import Backend
from gpuserve.context import ReplicaContext
from gpuserve.devices.device import Device
from gpuserve.errors import GpuserveError
from gpuserve.outcomes import BatchResult, Encoder

STOP_GRACE_S = 10.0  # how long a replica still running user code may take to end, unless told otherwise


class ExecutorDied(GpuserveError):
    """The executor was lost while running a batch (the pool restarts it).

    `self_inflicted`: the replica ended itself (it exited, aborted or crashed)
    rather than being killed from outside (SIGKILL or SIGTERM from another
    process, the kernel's out-of-memory killer): what it ran is to blame.
    """

    def __init__(self, message: str, *, self_inflicted: bool = False) -> None:
        super().__init__(message)
        self.self_inflicted = self_inflicted


class ExecutorStuck(ExecutorDied):
    """The batch ran past its call limit and the executor gave up on it (`Executor.abandon`)."""


class StreamLink(Protocol):
    """How the event loop reaches a running stream's producer (`executors/streaming.py`)."""

    def credit(self, steps: int) -> None:
        """Every reader still taking part has taken `steps` values."""

    def leave(self, index: int) -> None:
        """Request `index` left (client gone, limit passed): it drops out before the next step."""


class StreamSink(Protocol):
    """Where a streamed batch's steps arrive on the event loop (the batcher's side)."""

    def attach(self, link: StreamLink) -> None:
        """Called before the first step: how to pace and stop the producer."""

    def feed(self, indices: list[int], outcomes: list[Any]) -> None:
        """One step: per request index, its encoded value, None (its stream is over) or its `Failure`."""


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
    # Set by the pool: called when the executor finds itself lost while no batch runs (a worker
    # process that died idle), so that it is rebuilt at once rather than when next handed work.
    on_lost: Callable[[], None] | None = None

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

    async def stream(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder], sink: StreamSink
    ) -> BatchResult:
        """Run one batch of a streaming API: each step to `sink` as it is yielded; raises `ExecutorDied` if lost.

        Returns when no request takes part any more; the steps have reached `sink` by then.
        """
        raise NotImplementedError(f"executor kind {type(self).__name__} cannot run streaming APIs")

    def cancel(self, index: int) -> None:
        """Request `index` of the batch now running is gone (client left, deadline passed).

        An `async def` API's call for it is cancelled if it is still running;
        synchronous code cannot be interrupted, so by default nothing happens.
        """

    def abandon(self) -> bool:
        """The batch now running is stuck: give up on it, so that `run` raises `ExecutorStuck` soon.

        False, changing nothing, when the batch has just ended (its answer is
        on its way to `run`'s caller). The pool then rebuilds the replica with
        `restart`: a worker process is killed and started again; a thread,
        which cannot be killed, is left to finish on its own (counted in
        `abandoned_threads`) while a new replica is built beside it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot give up on a call that runs")

    @property
    def abandoned_threads(self) -> int:
        """Threads of replicas given up on that are still running user code."""
        return 0

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @abc.abstractmethod
    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """End the replica, waiting at most about `grace_s` for code still running.

        False when it could not be ended (a thread stuck in user code): the
        caller then knows the process must exit without waiting for it.
        """
