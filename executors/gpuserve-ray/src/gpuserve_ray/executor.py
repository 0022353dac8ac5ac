"""One replica as a Ray actor, driven through the same `Executor` interface as threads and processes.

The event loop awaits the actor's calls directly (a Ray object reference is
awaitable): no thread of the server waits on a replica. A batch's arguments
travel the way Ray sends any call's: small ones inline, large arrays through
the object store, so a replica receives them read-only (see README.md).

An actor that dies (killed, out of memory, its node lost) fails the batch it
was running with `ExecutorDied`, naming the replica and where it ran; the pool
then replaces it with a new actor, with back-off, while the others serve. An
actor that dies while idle is noticed through its `until_lost` call, and the
pool told at once (`on_lost`), so it is replaced before it is given work. A
call the watchdog gives up on (`abandon`) kills its actor: `run` then raises
`ExecutorStuck`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from gpuserve.plugin import (
    STOP_GRACE_S,
    BatchResult,
    Encoder,
    Executor,
    ExecutorDied,
    ExecutorStuck,
    GpuserveError,
    Placement,
)
from gpuserve_ray.actor import ActorBuild, ReplicaActor
from gpuserve_ray.cluster import ActorRequest

log = logging.getLogger("gpuserve.ray")
PLACEMENT_TIMEOUT_S = 300.0  # how long a new actor may wait for Ray to find it room and build it
PATIENCE_S = 10.0  # after this, the log says that a replica still waits


class ReplicaStartError(GpuserveError):
    """Ray could not place the replica's actor in time, or its build failed."""


class RayExecutor(Executor):
    def __init__(self, build: ActorBuild, request: ActorRequest) -> None:
        self.placement = Placement(build.worker_index, build.instance, ())  # its devices are Ray's to choose
        self._build = build
        self._options = request.options()
        self._request = request
        self._actor: Any = None
        self._lost = True  # until an actor is built
        self._calling = False  # a batch runs on the actor
        self._given_up = False  # the batch running was given up on: its actor is being killed
        self._loop: asyncio.AbstractEventLoop | None = None
        self.where: dict[str, Any] = {}

    @functools.cached_property
    def key(self) -> str:
        return f"ray#{self.placement.worker_index}.{self.placement.instance}"

    async def start(self) -> None:
        self._loop, self._given_up = asyncio.get_running_loop(), False
        actor = ReplicaActor.options(**self._options).remote()
        self._actor = actor
        # Never returns; fails when this actor dies. The callback runs on a Ray thread: it sets a flag only.
        actor.until_lost.remote().future().add_done_callback(lambda _: self._mark_lost(actor))
        try:
            self.where = await self._built(actor)
        except asyncio.TimeoutError:
            ray.kill(actor)
            raise ReplicaStartError(
                f"Ray did not place replica {self.key} (an actor asking for {self._request.describe()}) within "
                f"{PLACEMENT_TIMEOUT_S:g} s: the cluster's resources are taken (see `ray status`)"
            ) from None
        except RayTaskError as exc:
            ray.kill(actor)
            cause = exc.cause if exc.cause is not None else exc
            raise ReplicaStartError(f"replica {self.key} failed to build: {type(cause).__name__}: {cause}") from None
        except RayActorError as exc:
            raise ReplicaStartError(f"replica {self.key}'s actor died while it was built: {_first_line(exc)}") from None
        except BaseException:  # cancelled while Ray places or builds it: leave nothing behind
            ray.kill(actor)
            raise
        self._lost = False
        log.info("replica %s on %s, CUDA_VISIBLE_DEVICES=%s, devices %s, pid %s", self.key, self.where["where"],
                 self.where["cuda_visible_devices"], ",".join(self.where["devices"]), self.where["pid"])

    async def _built(self, actor: Any) -> dict[str, Any]:
        """Where the actor built its replica; says so in the log while Ray finds it no room."""
        build = asyncio.ensure_future(actor.build.remote(self._build))
        done, _ = await asyncio.wait([build], timeout=PATIENCE_S)
        if not done:
            log.warning("replica %s is waiting for Ray to place it (an actor asking for %s); giving it %g s",
                        self.key, self._request.describe(), PLACEMENT_TIMEOUT_S)
        return await asyncio.wait_for(build, PLACEMENT_TIMEOUT_S - PATIENCE_S)

    def _mark_lost(self, actor: Any) -> None:
        if actor is self._actor:  # not an actor this executor has already replaced
            self._lost = True
            if self.on_lost is not None and self._loop is not None:  # tell the pool, on its loop
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                    self._loop.call_soon_threadsafe(self.on_lost)

    @property
    def alive(self) -> bool:
        return not self._lost

    async def run(self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]) -> BatchResult:
        self._calling = True
        try:
            return await self._actor.run.remote(api_name, items, encoders)
        except RayActorError as exc:
            self._lost = True
            where = self.where.get("where", "its node")
            if self._given_up:
                raise ExecutorStuck(f"Ray actor of replica {self.key} on {where} was killed: its call was stuck") \
                    from None
            raise ExecutorDied(
                f"Ray actor of replica {self.key} on {where} (pid {self.where.get('pid')}) died: {_first_line(exc)}"
            ) from None
        finally:
            self._calling = False

    def abandon(self) -> bool:
        """Kill the actor running a stuck call: `run` then raises `ExecutorStuck`."""
        if not self._calling or self._actor is None:
            return False
        self._given_up = True
        ray.kill(self._actor, no_restart=True)
        return True

    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """Kill the actor (work was drained before this is called) and wait until Ray reports it gone."""
        actor, self._actor = self._actor, None
        self._lost = True
        if actor is None:
            return True
        ray.kill(actor, no_restart=True)
        try:
            await asyncio.wait_for(actor.until_lost.remote(), grace_s)
        except (RayActorError, asyncio.TimeoutError):
            pass
        return True


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
