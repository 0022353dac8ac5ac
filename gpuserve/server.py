"""The aiohttp application: routes, lifecycle, graceful shutdown.

Startup (in `cleanup_ctx`): the dispatcher starts, then every replica is built
in the background, so `/livez` answers at once and `/readyz` turns 200 when
all replicas are built. Shutdown, in order: refuse new requests, let queued
and running batches finish, stop the dispatcher, stop the executors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from importlib.metadata import entry_points

import attrs
from aiohttp import web

from gpuserve.batching import Batcher
from gpuserve.deployment import Deployment
from gpuserve.metrics import add_metrics_route
from gpuserve.pool import DevicePool
from gpuserve.protocols.native import add_fallback_route, add_native_routes

log = logging.getLogger("gpuserve")
PLUGIN_GROUP = "gpuserve.plugins"
LEFTOVER_DRAIN_S = 1.0


@attrs.define
class ServerState:
    """What handlers read: set up once in `cleanup_ctx`."""

    deployment: Deployment
    pool: DevicePool
    batcher: Batcher
    failure: str | None = None  # why building replicas (or the dispatcher) failed
    on_failure: Callable[[str], None] | None = None  # e.g. the CLI stops the server

    def fail(self, reason: str) -> None:
        self.failure = reason
        log.error("%s", reason)
        if self.on_failure is not None:
            self.on_failure(reason)

    @property
    def ready(self) -> bool:
        return self.pool.ready and self.failure is None


STATE = web.AppKey("gpuserve_state", ServerState)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    dispatcher = asyncio.create_task(state.batcher.run(), name="gpuserve-dispatcher")
    dispatcher.add_done_callback(functools.partial(_watch_dispatcher, state))
    build = asyncio.create_task(_build(state), name="gpuserve-build")
    try:
        yield
    finally:
        try:
            # The HTTP layer already waited for running requests (drain_timeout);
            # what is left here gets a moment, then fails with 503.
            await state.batcher.drain(LEFTOVER_DRAIN_S)
            for task in (build, dispatcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # reported already
                    await task
        finally:
            if not await state.pool.stop():
                log.warning("exiting with replica code still running (see above)")


def _watch_dispatcher(state: ServerState, task: asyncio.Task[None]) -> None:
    """A dispatcher that dies would leave every request to time out: stop serving instead."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("the dispatcher failed", exc_info=exc)
        state.fail(f"the dispatcher failed: {type(exc).__name__}: {exc}")


async def _build(state: ServerState) -> None:
    try:
        await state.pool.start()
    except Exception as exc:  # the user's constructor or the device failed
        state.fail(f"replicas failed to build: {exc}")
        return
    log.info("ready: %d replica(s) of %s", len(state.pool), state.deployment.spec.name)


def _load_plugins(app: web.Application) -> None:
    """Call each `gpuserve.plugins` hook; a broken one is logged, never fatal."""
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()(app)
        except Exception as exc:
            log.warning("plugin %r failed to set up: %s: %s", ep.name, type(exc).__name__, exc)


def create_app(deployment: Deployment, on_failure: Callable[[str], None] | None = None) -> web.Application:
    settings = deployment.settings
    pool = DevicePool(deployment.executors())
    batcher = Batcher(deployment.spec.apis.values(), pool, queue_size=settings.queue_size, timeout=settings.timeout)
    app = web.Application(client_max_size=settings.max_body_size)
    app[STATE] = ServerState(deployment, pool, batcher, on_failure=on_failure)
    app.cleanup_ctx.append(_lifecycle)
    add_native_routes(app, app[STATE])
    add_metrics_route(app, app[STATE])
    _load_plugins(app)
    add_fallback_route(app, app[STATE])
    return app

