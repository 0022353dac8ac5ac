"""The per-device executor pool: idle executors wait here to be handed work.

Executors are pulled by the batcher only when free, so a batch never waits
on a busy device while another is idle. An executor that is lost (its process
died) is replaced in the background while the others keep serving.
"""

from __future__ import annotations

import asyncio
import logging


from gpuserve.errors import GpuserveError
from gpuserve.executors.base import Executor

log = logging.getLogger(__name__)


class ReplicaBuildError(GpuserveError):
    """A replica's constructor (the user's `__init__`) or its device failed."""


class DevicePool:
    def __init__(self, executors: list[Executor]) -> None:
        if not executors:
            raise ValueError("a pool needs at least one executor")
        self.executors = executors
        self._idle: asyncio.Queue[Executor] = asyncio.Queue()
        self._replacing: set[asyncio.Task[None]] = set()  # strong references while they run
        self.ready = False

    def __len__(self) -> int:
        return len(self.executors)

    async def start(self) -> None:
        """Build every replica (concurrently); ready once all are built."""
        results = await asyncio.gather(*(e.start() for e in self.executors), return_exceptions=True)
        failures = [(e, r) for e, r in zip(self.executors, results) if isinstance(r, BaseException)]
        if failures:
            executor, error = failures[0]
            raise ReplicaBuildError(
                f"replica {executor.key} failed to build: {type(error).__name__}: {error}"
                + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
            ) from error
        for executor in self.executors:
            self._idle.put_nowait(executor)
        self.ready = True

    async def acquire(self) -> Executor:
        """The next free executor; one found dead while idle is replaced, not handed out."""
        while True:
            executor = await self._idle.get()
            if executor.alive:
                return executor
            log.error("executor %s died while idle", executor.key)
            self.replace(executor)

    def release(self, executor: Executor) -> None:
        self._idle.put_nowait(executor)

    def replace(self, executor: Executor) -> None:
        """Restart a lost executor in the background; it rejoins the idle ones when built."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._restart(executor), name=f"gpuserve-restart-{executor.key}")
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _restart(self, executor: Executor) -> None:
        delay = 0.1
        while True:
            try:
                await executor.restart()
            except Exception as exc:
                log.error("restarting executor %s failed: %s; retrying in %.1fs", executor.key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            log.warning("executor %s restarted", executor.key)
            self.release(executor)
            return

    async def stop(self) -> bool:
        """Stop every executor; False if some replica could not be ended."""
        self.ready = False
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        results = await asyncio.gather(*(e.stop() for e in self.executors), return_exceptions=True)
        for executor, result in zip(self.executors, results):
            if isinstance(result, BaseException):
                log.error("stopping %s failed: %s: %s", executor.key, type(result).__name__, result)
        return all(result is True for result in results)
