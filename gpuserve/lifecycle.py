"""Start and stop, in order, as aiohttp hooks.

Start (`cleanup_ctx`): the dispatcher starts, then every replica is built in
the background, so `/livez` answers at once and `/readyz` turns 200 when all
replicas are built.

Stop, within one budget (`StopBudget`, from `--drain-timeout`):
1. aiohttp closes the listeners and idle connections;
2. `on_shutdown`: the batcher refuses new work and lets queued and running
   batches finish until the budget's drain deadline, then answers what is
   left with 503 (shutting down);
3. aiohttp gives handlers a moment to write those answers;
4. `cleanup_ctx` exit: the executors end within what is left of the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gpuserve.state import STATE, ServerState

log = logging.getLogger("gpuserve")


async def drain(app: web.Application) -> None:
    """`on_shutdown`: finish what was accepted, within the budget."""
    state = app[STATE]
    loop = asyncio.get_running_loop()
    state.stop.begin(loop.time())
    await state.batcher.drain(state.stop.drain_until())


async def replicas(app: web.Application) -> AsyncIterator[None]:
    """`cleanup_ctx`: dispatch and build on the way in; stop the batcher and the executors on the way out."""
    state = app[STATE]
    state.loop_watch.start()
    state.batcher.start(on_failure=lambda exc: _dispatcher_failed(state, exc))
    build = asyncio.get_running_loop().create_task(_build(state), name="gpuserve-build")
    try:
        yield
    finally:
        state.loop_watch.stop()
        loop = asyncio.get_running_loop()
        state.stop.begin(loop.time())  # a stop without on_shutdown (a failed start) has the same budget
        build.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await build
        await state.batcher.close()
        if not await state.pool.stop(state.stop.left(loop.time())):
            log.warning("exiting with replica code still running (see above)")


def _dispatcher_failed(state: ServerState, exc: BaseException) -> None:
    log.error("the dispatcher failed", exc_info=exc)
    state.fail(f"the dispatcher failed: {type(exc).__name__}: {exc}")


async def _build(state: ServerState) -> None:
    try:
        await state.pool.start()
    except Exception as exc:  # the user's constructor or the device failed
        state.fail(f"replicas failed to build: {exc}")
        return
    log.info("ready: %d replica(s) of %s", len(state.pool), state.deployment.spec.name)
