"""Native JSON routes: `POST /<api>`, `/livez`, `/readyz`, `/stats`, JSON errors.

A body is checked against the API's declarations before it is queued
(`json_codec`); a request that fails in the user's code is logged once, with
its traceback, the API's name and the request's id. While the server stops,
a request is answered 503 and every answer carries `Connection: close`, so
no client sends another request on a connection about to close.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from gpuserve.batching import ItemFailed, Refused
from gpuserve.protocols.errors import json_error, refusal
from gpuserve.protocols.json_codec import BadRequest, argument_decoder, encode_json
from gpuserve.protocols.request_ids import HEADER, request_id
from gpuserve.service import ApiSpec

if TYPE_CHECKING:
    from gpuserve.state import ServerState

log = logging.getLogger("gpuserve.api")
TIMEOUT_HEADER = "X-Request-Timeout"  # seconds; overrides the server's default deadline
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_timeout(raw: str) -> float:
    """The request's own deadline in seconds, from its header."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise BadRequest(f"{TIMEOUT_HEADER}: {raw!r} is invalid: expected seconds > 0, e.g. 2.5")
    return value


def closing(state: ServerState, response: web.Response) -> web.Response:
    """`response`, with `Connection: close` while the server stops (every protocol's answers)."""
    if state.stopping:
        response.force_close()
    return response


def not_ready(state: ServerState, rid: str) -> web.Response:
    """503 with why no request is taken, or no replica can take work, now."""
    reason = state.readiness() or "replicas are still being built"
    return closing(state, json_error(503, f"not ready: {reason}", rid, retry_after=1))


async def read_body(request: web.Request, state: ServerState, rid: str) -> bytes | web.Response:
    """An API request's body; or, when there is none to take, the answer: not ready (503), too large (413).

    Requests are taken while replicas are rebuilt (they wait for one), not
    before the first build, once the server failed, nor while it stops.
    """
    if not state.accepting:
        return not_ready(state, rid)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(
            413, f"request body is larger than {state.deployment.settings.max_body_size} bytes (--max-body-size)", rid
        )


def log_failure(name: str, rid: str, exc: ItemFailed, where: str = "") -> None:
    """A call that raised, logged once: with its traceback (from a worker process too), API and request id."""
    failure = exc.failure
    log.error("%r failed%s for request %s: %s: %s\n%s", name, where, rid, failure.type, failure.message,
              failure.traceback.rstrip())


def failed(name: str, rid: str, exc: ItemFailed) -> web.Response:
    """The answer to a call that raised (500, naming the exception's type), logged."""
    log_failure(name, rid, exc)
    return json_error(500, f"{name!r} failed: {exc}", rid, type=exc.failure.type)


def _api_handler(api: ApiSpec, state: ServerState) -> Handler:
    batcher = state.batcher
    name = api.name
    decode = argument_decoder(api)

    async def handle(request: web.Request) -> web.Response:
        rid = request_id(request)
        body = await read_body(request, state, rid)
        if type(body) is not bytes:
            return body
        try:
            kwargs, rows = decode(body)
            # The batcher keeps the deadline (this one, or the server's default)
            # on the event loop, apart from the executor: a stuck device cannot
            # make a request late.
            own = request.headers.get(TIMEOUT_HEADER)
            future = batcher.submit(name, kwargs, encode_json, None if own is None else parse_timeout(own), rows,
                                    rid)
        except BadRequest as exc:
            return json_error(400, str(exc), rid, errors=exc.errors)
        except Refused as exc:
            return closing(state, refusal(exc, rid))
        # A client that disconnects cancels this handler and so `future`: the
        # batcher then drops the request if it has not started.
        try:
            payload = await future  # JSON bytes, encoded in the executor
        except ItemFailed as exc:
            return closing(state, failed(name, rid, exc))
        except Refused as exc:
            return closing(state, refusal(exc, rid))
        response = web.Response(body=payload, headers={"Content-Type": "application/json", HEADER: rid})
        if state.stopping:
            response.force_close()
        return response

    return handle


def add_native_routes(app: web.Application, state: ServerState) -> None:
    async def livez(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        """200 while some replica can take work ("degraded" while others are rebuilt), else 503 with why;
        each replica's state either way."""
        states = {key: health["state"] for key, health in state.pool.health_snapshot().items()}
        reason = state.readiness()
        if reason is not None:
            response = json_error(503, f"not ready: {reason}", request_id(request), retry_after=1, states=states)
            return closing(state, response)
        replacing = state.pool.replacing
        if not replacing:
            return web.json_response({"status": "ready", "replicas": len(states), "states": states})
        return web.json_response({"status": "degraded", "replicas": len(states), "replacing": replacing,
                                  "states": states})

    async def stats(_: web.Request) -> web.Response:
        snapshot = {**state.batcher.read_stats().snapshot(), "replicas": state.pool.health_snapshot()}
        return web.Response(body=orjson.dumps(snapshot), content_type="application/json")

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/stats", stats)
    for api in state.deployment.spec.apis.values():
        if not api.streams:  # streaming APIs: `protocols/streaming.py`
            app.router.add_post(f"/{api.name}", _api_handler(api, state))


def add_fallback_route(app: web.Application, state: ServerState) -> None:
    """JSON 404 / 405 (with `Allow`) for everything no other route took; registered last."""
    allowed: dict[str, list[str]] | None = None  # path -> its methods, read once every route is in place

    def methods_of(path: str) -> list[str]:
        nonlocal allowed
        if allowed is None:
            allowed = {}
            for route in app.router.routes():
                canonical = route.resource.canonical if route.resource is not None else ""
                if route.method != "*" and "{" not in canonical:
                    allowed.setdefault(canonical, []).append(route.method)
        return sorted(set(allowed.get(path, [])))

    async def fallback(request: web.Request) -> web.Response:
        rid = request_id(request)
        methods = methods_of(request.path)
        if methods:
            response = json_error(405, f"{request.method} {request.path}: use {' or '.join(methods)}", rid,
                                  allowed=methods)
            response.headers["Allow"] = ", ".join(methods)
            return response
        return json_error(404, f"no route {request.method} {request.path}", rid)

    app.router.add_route("*", "/{tail:.*}", fallback)
