"""Native JSON routes: `POST /<api>`, `/livez`, `/readyz`, `/stats`, JSON errors."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from gpuserve.batching import ItemFailed, Refused
from gpuserve.protocols.errors import json_error, refusal
from gpuserve.protocols.json_codec import BadRequest, argument_decoder, encode_json
from gpuserve.service import ApiSpec

if TYPE_CHECKING:
    from gpuserve.state import ServerState

TIMEOUT_HEADER = "X-Request-Timeout"  # seconds; overrides the server's default deadline


def _timeout(raw: str) -> float:
    """The request's own deadline in seconds, from its header."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise BadRequest(f"{TIMEOUT_HEADER}: {raw!r} is invalid: expected seconds > 0, e.g. 2.5")
    return value


def _api_handler(api: ApiSpec, state: "ServerState"):
    batcher = state.batcher
    settings = state.deployment.settings
    name = api.name
    decode = argument_decoder(api)

    async def handle(request: web.Request) -> web.Response:
        if not state.ready:
            reason = state.failure or "replicas are still being built"
            return json_error(503, f"not ready: {reason}", retry_after=1)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(
                413, f"request body is larger than {settings.max_body_size} bytes (--max-body-size)"
            )
        try:
            kwargs = decode(body)
            # The batcher keeps the deadline (this one, or the server's default)
            # on the event loop, apart from the executor: a stuck device cannot
            # make a request late.
            own = request.headers.get(TIMEOUT_HEADER)
            future = batcher.submit(name, kwargs, encode_json, None if own is None else _timeout(own))
        except BadRequest as exc:
            return json_error(400, str(exc))
        except Refused as exc:
            return refusal(exc)
        # A client that disconnects cancels this handler and so `future`: the
        # batcher then drops the item if it has not started.
        try:
            payload = await future  # JSON bytes, encoded in the executor
        except ItemFailed as exc:
            return json_error(500, f"{name!r} failed: {exc}", type=exc.failure.type)
        except Refused as exc:
            return refusal(exc)
        return web.Response(body=payload, content_type="application/json")

    return handle


def add_native_routes(app: web.Application, state: "ServerState") -> None:
    async def livez(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if not state.ready:
            reason = state.failure or "replicas are still being built"
            return json_error(503, f"not ready: {reason}", retry_after=1)
        replicas, replacing = len(state.pool), state.pool.replacing
        if not replacing:
            return web.json_response({"status": "ready", "replicas": replicas})
        if len(replacing) == replicas:  # none can take work until one is rebuilt
            lost = ", ".join(replacing)
            return json_error(503, f"not ready: every replica is being replaced after it was lost ({lost})",
                              retry_after=1, replacing=replacing)
        return web.json_response({"status": "degraded", "replicas": replicas, "replacing": replacing})

    async def stats(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(state.batcher.read_stats().snapshot()), content_type="application/json")

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/stats", stats)
    for api in state.deployment.spec.apis.values():
        app.router.add_post(f"/{api.name}", _api_handler(api, state))


def add_fallback_route(app: web.Application, state: "ServerState") -> None:
    """JSON 404 / 405 for everything no other route took; registered last."""
    api_paths = {f"/{name}" for name in state.deployment.spec.apis}

    async def fallback(request: web.Request) -> web.Response:
        if request.path in api_paths:
            return json_error(405, f"{request.method} {request.path}: use POST", allowed=["POST"])
        routes = sorted(api_paths | {"/livez", "/readyz", "/stats", "/metrics"})
        return json_error(404, f"no route {request.method} {request.path}; routes: {routes}")

    app.router.add_route("*", "/{tail:.*}", fallback)
