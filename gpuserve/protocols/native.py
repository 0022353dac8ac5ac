"""Native JSON routes: `POST /<api>`, `/livez`, `/readyz`, `/stats`, JSON errors.

A request is admitted or refused from its route and its queue alone, before
its body is read (`Batcher.admit`), so overload costs no reading and no
decoding; a connection refused for overload is not read again for a while
(`Connection.hold`). An admitted body is read within `--body-timeout`
(`arrived_body`, else `arriving_body`), checked against the API's declarations (`json_codec`; in a
helper process from `--off-loop-decode-size` on, `offload`) and queued. A
request that fails in the user's code is logged once, with its traceback, the
API's name and the request's id; its error body names the exception's type
and message, without paths or environment values unless `--debug-errors`.
While the server stops, a request is answered 503 and every answer carries
`Connection: close`, so no client sends another request on a connection
about to close. The helpers here serve every protocol's routes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from gpuserve.batching import ItemFailed, Reason, Refused
from gpuserve.protocols.connections import connection_of
from gpuserve.protocols.errors import json_error, refusal
from gpuserve.protocols.guards import (
    GUARDS,
    BodyRefused,
    Door,
    Guards,
    Turned,
    add_route,
    arrived_body,
    arriving_body,
    json_content,
)
from gpuserve.protocols.json_codec import BadRequest, argument_decoder, encode_json
from gpuserve.protocols.offload import DecodeWorker, OffloadFailed
from gpuserve.protocols.request_ids import HEADER, request_id
from gpuserve.service import ApiSpec

if TYPE_CHECKING:
    from gpuserve.state import ServerState

log = logging.getLogger("gpuserve.api")
TIMEOUT_HEADER = "X-Request-Timeout"  # seconds; overrides the server's default deadline, up to its maximum
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Refusals that say the server is overloaded: the connection is then not read again before Retry-After.
OVERLOAD = frozenset({Reason.QUEUE_FULL, Reason.LATENCY})


def parse_timeout(raw: str, cap: float) -> float:
    """The request's own deadline in seconds, from its header: more than 0, at most the server's maximum."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise BadRequest(f"{TIMEOUT_HEADER}: {raw!r} is invalid: expected seconds > 0, e.g. 2.5")
    if value > cap:
        raise BadRequest(f"{TIMEOUT_HEADER}: {raw!r} is over this server's maximum of {cap:g} s "
                         "(--max-request-timeout)")
    return value


def closing(state: ServerState, response: web.Response) -> web.Response:
    """`response`, with `Connection: close` while the server stops (every protocol's answers)."""
    if state.stopping:
        response.force_close()
    return response


def not_ready(state: ServerState, guards: Guards, rid: str) -> web.Response:
    """503 with why no request is taken, or no replica can take work, now (without paths or secrets)."""
    reason = state.readiness() or "replicas are still being built"
    return closing(state, json_error(503, f"not ready: {guards.public(reason)}", rid, retry_after=1))


def refused(request: web.Request, exc: Refused, rid: str, queue: str) -> web.Response:
    """The answer to a refused request; after an overload refusal its connection is held (`Connection.hold`)."""
    if exc.reason in OVERLOAD and exc.retry_after:
        connection = connection_of(request)
        if connection is not None:
            # Let in early when its queue has room, unless it was refused for latency: room would not help.
            let_in_by = queue if exc.reason is Reason.QUEUE_FULL else None
            exc.retry_after = connection.hold(exc.retry_after, let_in_by)
    return refusal(exc, rid)


def body_refused(exc: BodyRefused, rid: str) -> web.Response:
    """413 or 408 for a body that will not be read."""
    response = json_error(exc.status, str(exc), rid)
    if exc.status == 408:  # the rest of the body is still on its way: the connection cannot go on
        response.force_close()
    return response


def offload_failed(state: ServerState, exc: OffloadFailed, rid: str) -> web.Response:
    """503 for a body the helper process could not decode because it died or could not start (a retry may
    work); 500 when the decoder itself raised (it would again)."""
    log.error("request %s: %s", rid, exc)
    if exc.retryable:
        return closing(state, json_error(503, str(exc), rid, retry_after=1))
    return closing(state, json_error(500, str(exc), rid))


def taking(state: ServerState, guards: Guards, request: web.Request, rid: str,
           content: Callable[[web.BaseRequest], str | None] = json_content) -> web.Response | None:
    """None when an API request may go on to admission; else its answer: not ready (503), not JSON (415).

    Requests are taken while replicas are rebuilt (they wait for one), not
    before the first build, once the server failed, nor while it stops.
    """
    if not state.accepting:
        return not_ready(state, guards, rid)
    wrong_type = content(request)
    if wrong_type is not None:
        return json_error(415, wrong_type, rid)
    return None


def log_failure(name: str, rid: str, exc: ItemFailed, where: str = "") -> None:
    """A call that raised, logged once: with its traceback (from a worker process too), API and request id."""
    failure = exc.failure
    log.error("%r failed%s for request %s: %s: %s\n%s", name, where, rid, failure.type, failure.message,
              failure.traceback.rstrip())


def failed(name: str, rid: str, exc: ItemFailed, guards: Guards) -> web.Response:
    """The answer to a call that raised (500, naming the exception's type), logged."""
    log_failure(name, rid, exc)
    extra = {"traceback": exc.failure.traceback} if guards.debug_errors else {}
    return json_error(500, f"{name!r} failed: {guards.public(str(exc))}", rid, type=exc.failure.type, **extra)


def _api_handler(api: ApiSpec, state: ServerState, guards: Guards, offload: DecodeWorker | None) -> Handler:
    settings = state.deployment.settings
    batcher = state.batcher
    name = api.name
    decode = argument_decoder(api)
    max_body, body_timeout = settings.max_body_size, settings.body_timeout
    enter = Door(guards).enter
    timeout_cap = settings.request_timeout_cap
    off_loop = settings.off_loop_decode_size if offload is not None else 0

    async def handle(request: web.Request) -> web.StreamResponse:
        # The guard, entered here rather than around this coroutine: the hot route pays no layer for it.
        try:
            connection = enter(request)
        except Turned as turned:
            return turned.response
        rid = request_id(request)
        try:
            not_taken = taking(state, guards, request, rid)
            if not_taken is not None:
                return not_taken
            try:
                own = request.headers.get(TIMEOUT_HEADER)
                timeout = None if own is None else parse_timeout(own, timeout_cap)
                # Decided from the route and the queue alone: a refusal reads and decodes nothing.
                probe = batcher.admit(name)
                body = arrived_body(request, max_body)
                if body is None:
                    body = await arriving_body(request, max_body, body_timeout)
                if off_loop and len(body) >= off_loop:
                    kwargs, rows = await offload.decode(name, body)  # type: ignore[union-attr]
                else:
                    kwargs, rows = decode(body)
                del body
                # The batcher keeps the deadline (this one, or the server's default)
                # on the event loop, apart from the executor: a stuck device cannot
                # make a request late.
                future = batcher.submit(name, kwargs, encode_json, timeout, rows, rid, probe=probe)
            except BadRequest as exc:
                return closing(state, json_error(400, str(exc), rid, errors=exc.errors))
            except Refused as exc:
                return closing(state, refused(request, exc, rid, name))
            except BodyRefused as exc:
                return body_refused(exc, rid)
            except OffloadFailed as exc:
                return offload_failed(state, exc, rid)
            # A client that disconnects cancels this handler and so `future`: the
            # batcher then drops the request if it has not started.
            try:
                payload = await future  # JSON bytes, encoded in the executor
            except ItemFailed as exc:
                return closing(state, failed(name, rid, exc, guards))
            except Refused as exc:
                return closing(state, refusal(exc, rid))
            finally:
                # An exception the future holds has this frame in its traceback: let go
                # of it now, or the body and request stay until a garbage collection.
                del future
        finally:
            if connection is not None:
                connection.finished()
        response = web.Response(body=payload, headers={"Content-Type": "application/json", HEADER: rid})
        if state.stopping:
            response.force_close()
        return response

    return handle


def add_native_routes(app: web.Application, state: ServerState, offload: DecodeWorker | None = None) -> None:
    """The native routes; `offload` decodes bodies of at least `--off-loop-decode-size` bytes (None: none)."""
    guards = app.get(GUARDS) or Guards()

    async def livez(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(request: web.Request) -> web.Response:
        """200 while some replica can take work ("degraded" while others are rebuilt), else 503 with why;
        each replica's state either way."""
        states = {key: health["state"] for key, health in state.pool.health_snapshot().items()}
        reason = state.readiness()
        if reason is not None:
            response = json_error(503, f"not ready: {guards.public(reason)}", request_id(request), retry_after=1,
                                  states=states)
            return closing(state, response)
        replacing = state.pool.replacing
        if not replacing:
            return web.json_response({"status": "ready", "replicas": len(states), "states": states})
        return web.json_response({"status": "degraded", "replicas": len(states), "replacing": replacing,
                                  "states": states})

    async def stats(_: web.Request) -> web.Response:
        snapshot = {**state.batcher.read_stats().snapshot(), "replicas": state.pool.health_snapshot()}
        return web.Response(body=orjson.dumps(snapshot), content_type="application/json")

    add_route(app, "GET", "/livez", livez)
    add_route(app, "GET", "/readyz", readyz)
    add_route(app, "GET", "/stats", stats)
    for api in state.deployment.spec.apis.values():
        if not api.streams:  # streaming APIs: `protocols/streaming.py`
            add_route(app, "POST", f"/{api.name}", _api_handler(api, state, guards, offload), enters_door=True)


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

    add_route(app, "*", "/{tail:.*}", fallback, names_requests=True)
