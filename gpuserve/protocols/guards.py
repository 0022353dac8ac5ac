"""Who may call what, and what a request may carry: the checks every protocol's routes share.

Every route gpuserve serves is added through `add_route`, which puts its
handler behind the guard (`guarded`); routes added any other way (a plugin's)
get the same guard from a middleware, which `guard_other_routes` installs only
when there are such routes. (aiohttp runs a middleware as two more layers
around every request's handler, about a microsecond and a half; the guard in
the handler itself costs one call.) A hot route (the native APIs) enters the
guard's `Door` itself, first thing, and so is not wrapped at all. The guard:

- answers the probes (`/livez`, `/readyz`, and KServe v2's `/v2/health/live`
  and `/v2/health/ready`) always, so that an orchestrator can tell a live
  server from a dead one whatever else is set;
- gives a connection opened beyond `--max-connections` 503 and closes it;
- with `--allowed-hosts`, gives a `Host` the server does not answer for 421
  (a page that rebinds a name of its own to this address cannot reach it);
- with API keys, gives a request without `Authorization: Bearer <key>` naming
  one of them 401; keys are compared as SHA-256 digests in constant time;
- serves `/stats`, `/metrics`, `/docs` and `/openapi.json` as `--ops-routes`
  says: open, behind the key like the APIs, or not at all (404);
- tells the connection when a request's handler starts and ends (its head
  timer, `connections.py`);
- puts the request's id in the answer of a route that does not (the probes,
  the ops routes, the v2 metadata): every answer carries one.

Routes that read a body use `read_body` (413 before reading when the declared
length is over the limit, 408 when the body is slower than `--body-timeout`)
and JSON routes `json_content` (415 for a body that says it is not JSON: form
and text posts are what a web page may send anywhere without asking; no
`Content-Type` at all is accepted). `public` is what an error body may say of
an exception: its text without paths or values of the server's environment,
unless `--debug-errors`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import attrs
from aiohttp import StreamReader, web

from gpuserve.errors import DeclarationError
from gpuserve.protocols.connections import Connection, connection_of
from gpuserve.protocols.errors import json_error
from gpuserve.protocols.request_ids import HEADER, request_id
from gpuserve.settings import OpsRoutes, Settings

PROBES = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})  # KServe v2's too
OPS = frozenset({"/stats", "/metrics", "/docs", "/openapi.json"})
OPS_PREFIX = "/docs/"  # the docs page's assets
# Two or more path components, or a drive: what an exception's text shows of the machine's files.
_PATHS = re.compile(r"(?:[A-Za-z]:\\|~?/)[^\s'\"<>|:]+(?:[/\\][^\s'\"<>|:]+)+[/\\]?")
_SHORTEST_SECRET = 8  # environment values shorter than this are too common to be worth hiding
REDACTED = "<redacted>"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyRefused(Exception):
    """A body that will not be read: its status (413, 408) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_keys(path: str) -> list[str]:
    """The keys in a key file: one per line, blank lines and `#` comments ignored."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DeclarationError(f"api_key_file={path!r} cannot be read: {exc.strerror or exc}") from None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise DeclarationError(f"api_key_file={path!r} holds no key: expected one key per line")
    return keys


@attrs.frozen
class Guards:
    """What the middleware and the routes enforce, built once from the settings."""

    key_digests: tuple[bytes, ...] = attrs.field(default=(), repr=False)
    ops_routes: OpsRoutes = OpsRoutes.KEY
    allowed_hosts: frozenset[str] = frozenset()
    debug_errors: bool = False
    hidden: tuple[str, ...] = attrs.field(default=(), repr=False)  # environment values error bodies never show

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> Guards:
        keys = [settings.api_key] if settings.api_key else []
        if settings.api_key_file:
            keys += read_keys(settings.api_key_file)
        hidden = sorted({v for v in environ.values() if len(v) >= _SHORTEST_SECRET}, key=len, reverse=True)
        return cls(tuple(_digest(k) for k in keys), settings.ops_routes, frozenset(settings.allowed_hosts),
                   settings.debug_errors, tuple(hidden))

    def authorised(self, request: web.BaseRequest) -> bool:
        """Whether the request names an accepted key (every key is compared: no early way out)."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = _digest(given.strip())
        found = False
        for key in self.key_digests:
            found |= hmac.compare_digest(digest, key)
        return found

    def public(self, text: str) -> str:
        """What an error body may say of an exception's text: no paths, no environment values."""
        if self.debug_errors:
            return text
        for value in self.hidden:
            if value in text:
                text = text.replace(value, REDACTED)
        return _PATHS.sub(REDACTED, text)


GUARDS = web.AppKey("gpuserve_guards", Guards)


def _host_name(host: str) -> str:
    """The name in a `Host` header, without its port: `Example.com:80` -> `example.com`, `[::1]:3000` -> `[::1]`."""
    if host.startswith("["):
        return host[:host.find("]") + 1].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


def _is_ops(path: str) -> bool:
    return path in OPS or path.startswith(OPS_PREFIX)


Check = Callable[[web.Request, str], web.StreamResponse | None]  # a request and its path -> a refusal, or None
GUARDED = "gpuserve_guarded"  # set on a handler that is behind the guard already


def _checks(guards: Guards) -> Check | None:
    """What the settings ask of a request (421, 401, 404 instead of the route), or None when they ask nothing."""
    keys = bool(guards.key_digests)
    hosts = guards.allowed_hosts
    ops_open = guards.ops_routes is OpsRoutes.OPEN
    ops_off = guards.ops_routes is OpsRoutes.OFF
    if not (keys or hosts or ops_off):
        return None

    def check(request: web.Request, path: str) -> web.StreamResponse | None:
        if hosts and _host_name(request.headers.get("Host", "")) not in hosts:
            return json_error(421, "this server does not answer for that Host (--allowed-hosts)",
                              request_id(request))
        if keys and not (ops_open and _is_ops(path)) and not guards.authorised(request):
            response = json_error(401, "this server needs an API key: send 'Authorization: Bearer <key>'",
                                  request_id(request))
            response.headers["WWW-Authenticate"] = 'Bearer realm="gpuserve"'
            return response
        if ops_off and _is_ops(path):
            return json_error(404, f"no route {request.method} {path}", request_id(request))
        return None

    return check


def _refusal(check: Check | None, request: web.Request, connection: Connection | None) -> web.StreamResponse | None:
    """The guard's answer instead of the route's, or None; the probes are always the route's."""
    path = request.path
    if path in PROBES:
        return None
    if connection is not None and connection.over_limit:
        response = json_error(503, "too many connections: retry on a new one", request_id(request), retry_after=1)
        response.force_close()
        return response
    return None if check is None else check(request, path)


class Turned(Exception):
    """The guard's answer instead of the route's (`Door.enter` raises it): `response`."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class Door:
    """The guard as a route's own handler enters it: `enter` first, then `Connection.finished` when done.

    The hot routes (the native APIs) enter it themselves, so that no coroutine wraps them; every other
    route is wrapped in `_run_guarded`, which does the same.
    """

    __slots__ = ("_check",)

    def __init__(self, guards: Guards) -> None:
        self._check = _checks(guards)

    def enter(self, request: web.Request) -> Connection | None:
        """Tell the request's connection its handler runs, and return it (None: none); raises `Turned`
        when the guard answers instead of the route (the connection is then told the handler is done)."""
        connection = connection_of(request)
        if connection is not None:
            connection.started(request.content)
        # With the default settings nothing is asked of a request on a connection within the limit.
        check = self._check
        if check is not None or (connection is not None and connection.over_limit):
            refused = _refusal(check, request, connection)
            if refused is not None:
                if connection is not None:
                    connection.finished()
                raise Turned(refused)
        return connection


async def _run_guarded(door: Door, handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        connection = door.enter(request)
    except Turned as turned:
        return turned.response
    try:
        return await handler(request)
    finally:
        if connection is not None:
            connection.finished()


def _naming(handler: Handler) -> Handler:
    """`handler`, its answers carrying the request's id (`X-Request-ID`) when it does not put it there."""

    async def named(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        if HEADER not in response.headers:
            response.headers[HEADER] = request_id(request)
        return response

    return named


def guarded(guards: Guards, handler: Handler, names_requests: bool = False) -> Handler:
    """`handler` behind the guard that `guards` make; `names_requests`: its answers carry the request's id
    already (the API routes': the guard then adds nothing to them)."""
    route = functools.partial(_run_guarded, Door(guards), handler if names_requests else _naming(handler))
    setattr(route, GUARDED, True)
    return route


def add_route(app: web.Application, method: str, path: str, handler: Handler, names_requests: bool = False,
              enters_door: bool = False) -> None:
    """Serve `handler` at `method` `path`, behind the guard of `app`'s settings (every route of gpuserve's);
    `names_requests` as for `guarded`. `enters_door`: the handler enters the app's `Door` itself, first
    thing, and names its requests (a hot route: no coroutine around it)."""
    if enters_door:
        route = handler
        setattr(route, GUARDED, True)
    else:
        route = guarded(app.get(GUARDS) or Guards(), handler, names_requests)
    if method == "GET":
        app.router.add_get(path, route)  # HEAD too, as aiohttp serves a GET route
    else:
        app.router.add_route(method, path, route)


def guard_other_routes(app: web.Application) -> None:
    """Put the guard in front of the routes not added by `add_route` (a plugin's): a middleware, only if
    there are any. Call it once every route is in place."""
    if all(getattr(route.handler, GUARDED, False) for route in app.router.routes()):
        return
    door = Door(app.get(GUARDS) or Guards())

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if getattr(request.match_info.handler, GUARDED, False):
            return await handler(request)
        return await _run_guarded(door, _naming(handler), request)

    app.middlewares.append(guard)


def json_content(request: web.BaseRequest) -> str | None:
    """Why a JSON route refuses this request's body (415), or None: JSON, or no `Content-Type` at all."""
    raw = request.headers.get("Content-Type")
    if raw is None or raw == "application/json":
        return None
    kind = raw.partition(";")[0].strip().lower()
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return None
    return f"Content-Type {kind or raw!r} is not JSON: send application/json (or no Content-Type)"


async def read_body(request: web.BaseRequest, max_size: int, timeout: float) -> bytes:
    """The whole body; `BodyRefused` with 413 when it is larger than `max_size` (before reading what is
    still on its way, when its declared length says so), 408 when it takes longer than `timeout` seconds.

    A body that has all arrived (most do, with their head) is taken as it is: joined once if it came in
    pieces, not copied if in one. A body still on its way is read with a timer, its pieces taken as they
    come and joined once at the end: one copy (aiohttp's `read` makes two or three), and memory for what
    has arrived only, never for what a `Content-Length` merely claims.
    """
    body = arrived_body(request, max_size)
    return body if body is not None else await arriving_body(request, max_size, timeout)


async def arriving_body(request: web.BaseRequest, max_size: int, timeout: float) -> bytes:
    """The body of a request whose body has not all arrived (`arrived_body` said None), as `read_body` reads it."""
    length = request.content_length
    if length is not None and length > max_size:
        raise _too_large(max_size, length)
    return await _read_slowly(request.content, max_size, timeout)


def arrived_body(request: web.BaseRequest, max_size: int) -> bytes | None:
    """The whole body when it has all arrived (as `read_body` takes it, without a coroutine), else None."""
    content = request.content
    if not content.is_eof():
        return None
    body = content.read_nowait()
    if len(body) > max_size:
        raise _too_large(max_size, len(body))
    return body


async def _read_all(content: StreamReader, max_size: int) -> bytes:
    piece = await _next_piece(content)
    if content.at_eof():  # it came in one piece: that piece is the body
        if len(piece) > max_size:
            raise _too_large(max_size)
        return piece
    pieces, size = [], 0
    while piece:
        size += len(piece)
        if size > max_size:
            raise _too_large(max_size)
        pieces.append(piece)
        piece = await _next_piece(content)
    return b"".join(pieces)


async def _next_piece(content: StreamReader) -> bytes:
    """The next piece of the body as it came (`readany` would join those already here: a copy), b"" at
    its end; the ends of HTTP chunks are skipped."""
    while True:
        piece, chunk_end = await content.readchunk()
        if piece or not chunk_end:
            return piece


def _too_large(max_size: int, size: int | None = None) -> BodyRefused:
    what = "request body" if size is None else f"request body of {size} bytes"
    return BodyRefused(413, f"{what} is larger than {max_size} bytes (--max-body-size)")


class _BodyLate(Exception):
    """What the body's reader raises once its time is up (the timer sets it on the stream)."""


async def _read_slowly(content: StreamReader, max_size: int, timeout: float) -> bytes:
    # A timer that fails the stream's next read: cheaper than a timeout scope around the reads
    # (`asyncio.timeout` costs a task lookup, a deadline object and two reschedules a body).
    timer = asyncio.get_running_loop().call_later(timeout, content.set_exception, _BodyLate())
    try:
        return await _read_all(content, max_size)
    except _BodyLate:
        raise BodyRefused(408, f"request body took longer than {timeout:g} s (--body-timeout)") from None
    finally:
        timer.cancel()
