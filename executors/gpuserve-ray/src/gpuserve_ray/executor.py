"""One replica as a Ray actor, driven through the same `Executor` interface as threads and processes.

Batches go to the actor through a Ray compiled graph of its `run` method
(`experimental_compile`, with asyncio): its arguments and its results travel
through shared-memory channels that Ray sets up once, not as a task submitted
per call, which costs a round trip of the scheduler's machinery each time
(about three times longer here). The event loop awaits each batch's result
directly: no thread of the server waits on a replica. Compiling blocks the loop
for a tenth of a second or so, once per actor, when it is built; its first
trip, which sets the channels up, is made then too, before the actor takes work.
Where Ray cannot compile the graph the batches go as plain actor calls, as
fast as Ray's tasks go, and the log says so. Either way a batch's arguments
travel the way Ray sends them, large arrays through the object store, so a
replica receives them read-only (see README.md).

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
from ray.dag import InputNode
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
        self._graph: Any = None  # the actor's `run` as a compiled graph (None: plain actor calls)
        self._gone: asyncio.Future[None] | None = None  # done when the actor dies
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
        self._gone = self._loop.create_future()  # done when this actor dies
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
        self._graph = await self._compiled(actor)
        self._lost = False
        log.info("replica %s on %s, CUDA_VISIBLE_DEVICES=%s, devices %s, pid %s; batches through %s", self.key,
                 self.where["where"], self.where["cuda_visible_devices"], ",".join(self.where["devices"]),
                 self.where["pid"], "a compiled graph" if self._graph is not None else "plain actor calls")

    async def _built(self, actor: Any) -> dict[str, Any]:
        """Where the actor built its replica; says so in the log while Ray finds it no room."""
        build = asyncio.ensure_future(actor.build.remote(self._build))
        done, _ = await asyncio.wait([build], timeout=PATIENCE_S)
        if not done:
            log.warning("replica %s is waiting for Ray to place it (an actor asking for %s); giving it %g s",
                        self.key, self._request.describe(), PLACEMENT_TIMEOUT_S)
        return await asyncio.wait_for(build, PLACEMENT_TIMEOUT_S - PATIENCE_S)

    async def _compiled(self, actor: Any) -> Any:
        """`actor.run` as a compiled graph, its channels set up by a first trip; None if Ray cannot compile it."""
        with InputNode() as given:
            node = actor.run.bind(given[0], given[1], given[2])
        try:
            graph = node.experimental_compile(enable_asyncio=True)
        except Exception as exc:
            log.warning("replica %s takes batches as plain Ray actor calls (slower): Ray could not compile its "
                        "graph: %s: %s", self.key, type(exc).__name__, _first_line(exc))
            return None
        try:
            await (await graph.execute_async(None, (), ()))
        except BaseException:  # the start fails, as a failed build does: leave nothing behind
            self._teardown(graph)
            ray.kill(actor)
            raise
        return graph

    @staticmethod
    def _teardown(graph: Any) -> None:
        if graph is not None:
            with contextlib.suppress(Exception):  # its actor is gone already: nothing left to stop
                graph.teardown()

    def _mark_lost(self, actor: Any) -> None:
        if actor is self._actor:  # not an actor this executor has already replaced
            self._lost = True
            if self._loop is not None:  # tell the pool and a batch waiting on it, on their loop
                with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                    self._loop.call_soon_threadsafe(self._tell_lost, actor)

    def _tell_lost(self, actor: Any) -> None:
        if actor is not self._actor:
            return
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if self.on_lost is not None:
            self.on_lost()

    @property
    def alive(self) -> bool:
        return not self._lost

    async def run(self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]) -> BatchResult:
        self._calling = True
        try:
            if self._graph is None:
                return await self._actor.run.remote(api_name, items, encoders)
            return await self._through_graph(api_name, items, encoders)
        except RayActorError as exc:
            raise self._died(_first_line(exc)) from None
        finally:
            self._calling = False

    async def _through_graph(self, api_name: str, items: Sequence[dict[str, Any]],
                             encoders: Sequence[Encoder]) -> BatchResult:
        async def call() -> BatchResult:
            return await (await self._graph.execute_async(api_name, items, encoders))

        # A graph whose actor died may never answer (Ray tears it down): the actor's end is awaited beside it.
        answer = asyncio.ensure_future(call())
        assert self._gone is not None
        try:
            await asyncio.wait((answer, self._gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The batch is given up here, not in the graph: cancelling Ray's future would stop the graph's
            # reader, and every later batch would wait forever. Its answer arrives and is dropped.
            answer.add_done_callback(_drop)
            raise
        if not answer.done() or answer.cancelled():  # the actor is gone: its graph goes with it
            answer.cancel()
            raise self._died("its process ended while it ran the batch")
        try:
            return answer.result()
        except RayTaskError:  # raised by the actor's method: the actor lives
            raise
        except Exception as exc:
            # The graph's channel broke: whatever its reader met first, its actor is gone.
            raise self._died(_first_line(exc)) from None

    def _died(self, why: str) -> ExecutorDied:
        self._lost = True
        where = self.where.get("where", "its node")
        if self._given_up:
            return ExecutorStuck(f"Ray actor of replica {self.key} on {where} was killed: its call was stuck")
        return ExecutorDied(f"Ray actor of replica {self.key} on {where} (pid {self.where.get('pid')}) died: {why}")

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
        graph, self._graph = self._graph, None
        self._lost = True
        if actor is None:
            return True
        self._teardown(graph)  # first: torn down after its actor, the graph logs the actor's death as an error
        ray.kill(actor, no_restart=True)
        try:
            await asyncio.wait_for(actor.until_lost.remote(), grace_s)
        except (RayActorError, asyncio.TimeoutError):
            pass
        return True


def _drop(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()  # retrieved: a failure nobody waits for any more is not logged as unhandled


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
