"""A replica in a dedicated thread of the server process, its device made current there."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gpuserve.backend import Backend
from gpuserve.executors.base import STOP_GRACE_S, Executor, ExecutorStuck, Placement, StreamSink
from gpuserve.executors.replica import Replica
from gpuserve.executors.streaming import StreamControl
from gpuserve.outcomes import BatchResult, Encoder
from gpuserve.service import ServiceSpec

log = logging.getLogger(__name__)

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran, or given up on as stuck
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Deliveries:
    """A stream's steps from the replica's thread to the event loop: one wake-up of the loop per burst of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[int], list[Any]], None]) -> None:
        self._loop = loop
        self._deliver = deliver
        self._steps: collections.deque[tuple[list[int], list[Any]]] = collections.deque()
        self._scheduled = False

    def put(self, indices: list[int], outcomes: list[Any]) -> None:
        """In the replica's thread."""
        self._steps.append((indices, outcomes))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._scheduled = False  # first: a step put from now on schedules another drain
        steps, deliver = self._steps, self._deliver
        while steps:
            deliver(*steps.popleft())


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    """A replica thread's loop: its own queue of jobs, until `None`."""
    while (job := jobs.get()) is not None:
        fn, args, future, loop = job
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(_settle, future, result, error)
        del job, fn, args, future, result, error  # idle, it holds nothing of the batch it ran


class ThreadExecutor(Executor):
    """One thread per replica: the device stays current and the model is never
    touched by two threads at once. Jobs go in through a queue and answers come
    back with `call_soon_threadsafe`: the cheapest hop there is between the event
    loop and a thread. The thread is a daemon, so a replica stuck in user code
    cannot keep the process from exiting after shutdown gave up on it.

    A thread cannot be killed: one stuck in user code is abandoned (its queue
    told to end, its late answer dropped) and each build makes a new thread
    and a new instance of the service, so the replica serves again while the
    old thread finishes, if ever, on its own.
    """

    def __init__(self, spec: ServiceSpec, backend: Backend, placement: Placement) -> None:
        self.placement = placement
        self._spec = spec
        self._backend = backend
        self._replica: Replica | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._running: asyncio.Future[Any] | None = None  # the batch now running
        self._abandoned: list[threading.Thread] = []
        self._batch = 0

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None:
            raise RuntimeError(f"executor {self.key} is not started")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return future

    def new_replica(self) -> Replica:
        """A replica not built yet: each build makes a new instance of the service."""
        return Replica(self._spec, self.placement.context(self._backend), self.placement.process_memory_fraction)

    async def start(self) -> None:
        self._replica = self.new_replica()
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=_work, args=(self._jobs,), name=f"gpuserve-{self.key}", daemon=True)
        self._thread.start()
        await self._submit(self._replica.build)

    async def run(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]
    ) -> BatchResult:
        self._batch += 1
        assert self._replica is not None
        future = self._running = self._submit(self._replica.run, api_name, items, encoders, self._batch)
        return await future

    async def stream(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder], sink: StreamSink
    ) -> BatchResult:
        self._batch += 1
        assert self._replica is not None
        control = StreamControl(len(items))  # called from here, read by the replica's thread
        sink.attach(control)
        deliveries = _Deliveries(asyncio.get_running_loop(), sink.feed)
        try:
            return await self._submit(self._replica.stream, api_name, items, encoders, self._batch, deliveries.put,
                                      control)
        except asyncio.CancelledError:  # the server stops: the generators are closed before the next step
            control.stop()
            raise

    def cancel(self, index: int) -> None:
        if self._replica is not None:
            self._replica.cancel_threadsafe(self._batch, index)

    def abandon(self) -> bool:
        running, thread = self._running, self._thread
        if running is None or running.done() or thread is None:
            return False
        self._thread = None
        self._jobs.put(None)  # the thread ends when its call returns, if it ever does
        self._abandoned = [t for t in self._abandoned if t.is_alive()] + [thread]
        running.set_exception(ExecutorStuck(f"replica {self.key} was given up on; its thread is left running"))
        return True

    @property
    def abandoned_threads(self) -> int:
        return sum(thread.is_alive() for thread in self._abandoned)  # read from any thread: no writes

    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join, grace_s)
        if thread.is_alive():
            log.warning("replica %s is still running user code after %.1f s; leaving it", self.key, grace_s)
            return False
        return True
