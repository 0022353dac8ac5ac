"""A replica in a dedicated thread of the server process, its device made current there."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gpuserve.backend import Backend
from gpuserve.executors.base import STOP_GRACE_S, Executor, Placement
from gpuserve.executors.replica import Replica
from gpuserve.outcomes import BatchResult, Encoder
from gpuserve.service import ServiceSpec

log = logging.getLogger(__name__)

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ThreadExecutor(Executor):
    """One thread per replica: the device stays current and the model is never
    touched by two threads at once. Jobs go in through a queue and answers come
    back with `call_soon_threadsafe`: the cheapest hop there is between the event
    loop and a thread. The thread is a daemon, so a replica stuck in user code
    cannot keep the process from exiting after shutdown gave up on it.
    """

    def __init__(self, spec: ServiceSpec, backend: Backend, placement: Placement) -> None:
        self.placement = placement
        self._replica = Replica(spec, placement.context(backend), placement.process_memory_fraction)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._batch = 0

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future, loop = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            loop.call_soon_threadsafe(_settle, future, result, error)
            del job, fn, args, future, result, error  # idle, it holds nothing of the batch it ran

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._thread is None:
            raise RuntimeError(f"executor {self.key} is not started")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, args, future, loop))
        return future

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name=f"gpuserve-{self.key}", daemon=True)
        self._thread.start()
        await self._submit(self._replica.build)

    async def run(
        self, api_name: str, items: Sequence[dict[str, Any]], encoders: Sequence[Encoder]
    ) -> BatchResult:
        self._batch += 1
        return await self._submit(self._replica.run, api_name, items, encoders, self._batch)

    def cancel(self, index: int) -> None:
        self._replica.cancel_threadsafe(self._batch, index)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join, grace_s)
        if thread.is_alive():
            log.warning("replica %s is still running user code after %.0f s; leaving it", self.key, grace_s)
            return False
        return True
