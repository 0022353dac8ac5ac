"""Start and stop, in order, as aiohttp hooks (the runner calls `drain` itself, first).

Start (`cleanup_ctx`): the dispatcher and its watchdog start, then every
replica is built in the background, so `/livez` answers at once and `/readyz`
turns 200 when all replicas are built. A replica that fails to build (at
start, or `--max-build-failures` times in a row later) fails the server:
`/readyz` says why, and by default the process exits with status 1.

Stop, within one budget (`StopBudget`, from `--drain-timeout`):
1. the listeners close; open connections stay, and a request that arrives on
   one is answered 503 with `Connection: close` (so is every answer written
   from now on);
2. `drain`: the batcher refuses new work and lets queued and running batches
   finish until the budget's drain deadline, then answers what is left with
   503 (shutting down); connections stay open at least `linger_s`;
3. aiohttp closes the connections and gives handlers a moment to write;
4. `cleanup_ctx` exit: the executors end within what is left of the budget
   (a worker process is killed at its end; a thread stuck in user code is a
   daemon and does not hold the process).
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
    """Finish what was accepted, within the budget (idempotent: also the `on_shutdown` hook)."""
    state = app[STATE]
    loop = asyncio.get_running_loop()
    state.begin_stop(loop.time())
    budget = state.stop
    await state.batcher.drain(budget.drain_until())
    assert budget.started is not None
    linger_until = min(budget.started + budget.linger_s, budget.drain_until())
    await asyncio.sleep(max(linger_until - loop.time(), 0.0))


async def replicas(app: web.Application) -> AsyncIterator[None]:
    """`cleanup_ctx`: dispatch and build on the way in; stop the batcher and the executors on the way out."""
    state = app[STATE]
    state.pool.on_failure = state.fail
    state.batcher.start(on_failure=lambda exc: _dispatcher_failed(state, exc))
    build = asyncio.get_running_loop().create_task(_build(state), name="gpuserve-build")
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        state.begin_stop(loop.time())  # a stop without the drain (a failed start) has the same budget
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
    state.built()
    log.info("ready: %d replica(s) of %s", len(state.pool), state.deployment.spec.name)
