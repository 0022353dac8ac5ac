"""Start and stop, in order, as aiohttp hooks (the runner calls `drain` itself, first).

Start (`cleanup_ctx`): the dispatcher and its watchdog start, then every
replica is built in the background, so `/livez` answers at once and `/readyz`
turns 200 when all replicas are built (the heap built by then is frozen out of
the garbage collector's sight, and young collections run less often: see
`YOUNG_COLLECTION_ALLOCATIONS`), and the C heap is kept for the next requests
rather than given back (`gpuserve.heap`). A replica that fails to build (at start, or
`--max-build-failures` times in a row later) fails the server: `/readyz` says
why, and by default the process exits with status 1.

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
import gc
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gpuserve.heap import keep_heap
from gpuserve.state import STATE, ServerState

log = logging.getLogger("gpuserve")
# Under load a request that waits tens of milliseconds outlives two young
# collections at Python's default threshold (700 allocations) and is promoted
# to the old generation, whose collections then walk the whole heap, the
# framework's and the model's objects included: hundreds of milliseconds with
# the event loop stopped. Young collections every this many allocations let
# such requests die young, and the heap built at start is frozen out of the
# collector's sight once every replica is built.
YOUNG_COLLECTION_ALLOCATIONS = 50_000


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
    gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *gc.get_threshold()[1:])
    keep_heap()
    state.loop_watch.start()
    state.batcher.start(on_failure=lambda exc: _dispatcher_failed(state, exc))
    build = asyncio.get_running_loop().create_task(_build(state), name="gpuserve-build")
    try:
        yield
    finally:
        state.loop_watch.stop()
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
    gc.collect()
    gc.freeze()  # what was built so far lives as long as the server: the collector need not walk it again
    state.built()
    log.info("ready: %d replica(s) of %s", len(state.pool), state.deployment.spec.name)
