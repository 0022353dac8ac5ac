"""A replica in a dedicated thread of the server process, its device made current there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gpuserve.backend import Backend
from gpuserve.executors.base import STOP_GRACE_S, Executor, Placement
from gpuserve.executors.replica import BatchResult, Replica
from gpuserve.service import ServiceSpec

log = logging.getLogger(__name__)


class ThreadExecutor(Executor):
    def __init__(self, spec: ServiceSpec, backend: Backend, placement: Placement) -> None:
        self.placement = placement
        self._replica = Replica(spec, placement.context(backend), placement.process_memory_fraction)
        self._thread: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        # One thread per replica: the device stays current and the model is
        # never touched by two threads at once.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpuserve-{self.key}")
        await asyncio.wrap_future(self._thread.submit(self._replica.build))

    async def run(self, api_name: str, items: Sequence[dict[str, Any]]) -> BatchResult:
        assert self._thread is not None, "executor not started"
        return await asyncio.wrap_future(self._thread.submit(self._replica.run, api_name, items))

    async def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        if self._thread is None:
            return True
        thread, self._thread = self._thread, None
        thread.shutdown(wait=False, cancel_futures=True)
        waiting = asyncio.get_running_loop().run_in_executor(None, thread.shutdown, True)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), grace_s)
        except asyncio.TimeoutError:
            log.warning("replica %s is still running user code after %.0f s; leaving it", self.key, grace_s)
            return False
        return True
