"""The per-device executor pool: idle executors wait here to be handed work.

Executors are pulled by the batcher only when free, so a batch never waits
on a busy device while another is idle.
"""

from __future__ import annotations

import asyncio
import logging

import anyio

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
        self.ready = False
        self.restarts = 0

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
        return await self._idle.get()

    def release(self, executor: Executor) -> None:
        self._idle.put_nowait(executor)

    async def restart(self, executor: Executor) -> None:
        """Replace a lost executor, then put it back to work; retry until it builds."""
        self.restarts += 1
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

    async def stop(self) -> None:
        self.ready = False
        async with anyio.create_task_group() as tg:
            for executor in self.executors:
                tg.start_soon(executor.stop)
