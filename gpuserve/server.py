"""The aiohttp application: state, lifecycle hooks and routes, put together once.

`create_app` is the facade; `runner.serve` runs what it returns. The pieces:
`state.py` (what handlers read), `lifecycle.py` (start and stop in order),
`protocols/` (routes, and the guards every route goes through: keys, hosts,
ops routes), `metrics.py` (`/metrics`), and `gpuserve.plugins` hooks, which
receive the application before it starts.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from aiohttp import web

from gpuserve import lifecycle
from gpuserve.batching import Batcher, StreamLimits
from gpuserve.deployment import Deployment
from gpuserve.metrics import metrics_handler
from gpuserve.pool import DevicePool
from gpuserve.protocols.guards import GUARDS, Guards, add_route, guard_other_routes
from gpuserve.protocols.kserve_v2 import add_v2_routes
from gpuserve.protocols.native import add_fallback_route, add_native_routes
from gpuserve.protocols.offload import DecodeWorker
from gpuserve.protocols.openapi import add_openapi_routes
from gpuserve.protocols.streaming import add_stream_routes
from gpuserve.registry import PLUGINS_GROUP
from gpuserve.state import STATE, ServerState, StopBudget

log = logging.getLogger("gpuserve")


def _load_plugins(app: web.Application) -> None:
    """Call each `gpuserve.plugins` hook; a broken one is logged, never fatal."""
    for ep in entry_points(group=PLUGINS_GROUP):
        try:
            ep.load()(app)
        except Exception as exc:
            log.warning("plugin %r failed to set up: %s: %s", ep.name, type(exc).__name__, exc)


def create_app(deployment: Deployment) -> web.Application:
    """The application; `DeclarationError` when a setting cannot be used (an unreadable key file)."""
    settings = deployment.settings
    guards = Guards.from_settings(settings, deployment.base_env)
    pool = DevicePool(deployment.executors(), max_build_failures=settings.max_build_failures)
    limits = StreamLimits(settings.max_streams, settings.stream_timeout, settings.stream_gap_timeout)
    batcher = Batcher(deployment.spec.apis.values(), pool, queue_size=settings.queue_size, timeout=settings.timeout,
                      call_timeout=settings.call_timeout, stream_limits=limits)
    app = web.Application(client_max_size=settings.max_body_size)
    app[GUARDS] = guards
    app[STATE] = ServerState(deployment, pool, batcher, StopBudget(settings.drain_timeout))
    app.on_shutdown.append(lifecycle.drain)
    app.cleanup_ctx.append(lifecycle.replicas)
    offload = DecodeWorker(deployment.service_ref, deployment.base_env) if settings.off_loop_decode_size else None
    if offload is not None:
        app.on_cleanup.append(lambda _: offload.stop())
    add_native_routes(app, app[STATE], offload)
    add_stream_routes(app, app[STATE])
    add_openapi_routes(app, app[STATE])
    add_v2_routes(app, app[STATE], offload)
    add_route(app, "GET", "/metrics", metrics_handler(app[STATE]))
    _load_plugins(app)
    add_fallback_route(app, app[STATE])
    guard_other_routes(app)  # a plugin's routes, if it added any
    return app
