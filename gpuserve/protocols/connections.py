"""Connections: how many are served, how long each may take to speak, and the socket that listens for them.

aiohttp parses HTTP; what it leaves unbounded is bounded here, per connection:

- the head of a request must be complete within `header_timeout` of its first
  byte (of the connection's opening, for its first request), else the
  connection is closed: a client that sends one byte now and then holds no
  descriptor for long;
- an idle connection is closed after `keepalive_timeout` (aiohttp's timer);
- at most `max_connections` are served: the guard answers requests of the
  connections beyond with 503 and closes them (the probes are still answered),
  and by default the limit leaves room under the open-file limit, which the
  server raises to its hard limit, so the server's own files, the probes and
  those answers never run out of descriptors;
- a connection whose request was refused for overload is not read again
  for a while (`WaitingRoom`): a client that retries at once costs the server
  one refusal per wait, not one per round trip. The wait is the refusal's
  `Retry-After`, longer when many connections are already held, so that
  answering them costs about `REFUSALS_PER_S` refusals a second however many
  clients crowd the door; the connection is held for a random part of it (half
  to all), so clients turned away together do not come back together, and a
  client that honours `Retry-After` never finds its connection still held.
  Sooner than that, when the queue that refused it is less than half full,
  the connections it refused are read again, oldest first: the queue never
  runs dry while clients wait at the door, and its upper half is left to the
  clients being served, whose next requests come at once.

A request's body has its own timeout, kept where the body is read
(`guards.read_body`). Each connection is a `Connection` around aiohttp's own
handler; the guard every route goes through tells it when a request's handler
starts and ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import resource
import ssl
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import StreamReader, web

log = logging.getLogger("gpuserve")
# Descriptors kept for the server itself (executors, files, the answers of
# connections over the limit): an eighth of the limit, at least this many.
RESERVED_FILES = 64
# Overload refusals a second the server accepts to answer on held connections
# (each costs the event loop tens of microseconds).
REFUSALS_PER_S = 1000
TICK_S = 0.01  # how often held connections are let in when their queue has room


@attrs.frozen
class ConnectionLimits:
    """What the listening site keeps to: its backlog, the connections it serves, a head's time, its TLS."""

    backlog: int
    max_connections: int
    header_timeout: float
    ssl_context: ssl.SSLContext | None = None


def open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (as far as the kernel allows); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft if soft != resource.RLIM_INFINITY else wanted
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # e.g. above the kernel's nr_open
        return soft
    return wanted


def default_max_connections(files: int) -> int:
    """Connections served within `files` descriptors, leaving the server's own share."""
    return max(files - max(RESERVED_FILES, files // 8), 1)


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context for HTTPS, TLS 1.2 and later; `ssl.SSLError`/`OSError` when the files cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # An encrypted key fails here rather than waiting for a passphrase typed on a terminal.
    context.load_cert_chain(certfile, keyfile, password="")
    return context


Room = Callable[[str], int]  # a queue's name -> the requests it takes before it is half full


class WaitingRoom:
    """Connections held after an overload refusal, per queue that refused them, oldest first.

    Each is read again when its wait is over or, sooner, when its queue has
    room: a tick every `TICK_S` lets in, per queue, as many of the oldest held
    connections as the queue takes before it is half full.
    """

    def __init__(self, room: Room | None, loop: asyncio.AbstractEventLoop) -> None:
        self._room = room
        self._loop = loop
        self._held: dict[str | None, dict[Connection, None]] = {}  # insertion order: oldest first
        self.count = 0
        self._tick: asyncio.TimerHandle | None = None

    def hold(self, connection: Connection, queue: str | None, retry_after: float) -> float:
        """Hold `connection` (refused by `queue`; None: let in by time only); the wait to tell its client."""
        wait = max(retry_after, math.ceil(self.count / REFUSALS_PER_S))
        if connection.pause(self._loop.call_later(wait * random.uniform(0.5, 1.0), self.release, connection)):
            self._held.setdefault(queue, {})[connection] = None
            self.count += 1
            if self._tick is None and self._room is not None:
                self._tick = self._loop.call_later(TICK_S, self._let_in)
        return wait

    def release(self, connection: Connection) -> None:
        """Read `connection` again: its wait is over, its queue has room, or it closed."""
        for held in self._held.values():
            if connection in held:
                del held[connection]
                self.count -= 1
                break
        connection.resume()

    def _let_in(self) -> None:
        self._tick = None
        assert self._room is not None
        for queue, held in self._held.items():
            if queue is None or not held:
                continue
            for connection in list(itertools.islice(held, self._room(queue))):
                self.release(connection)
        if self.count:
            self._tick = self._loop.call_later(TICK_S, self._let_in)


class Census:
    """The site's connections: how many are open, and those held after a refusal."""

    __slots__ = ("open", "waiting")

    def __init__(self, waiting: WaitingRoom) -> None:
        self.open = 0
        self.waiting = waiting


class Connection(asyncio.Protocol):
    """One client connection: aiohttp's handler inside, its head timer, its place in the count, its holds."""

    __slots__ = ("inner", "transport", "over_limit", "busy", "_census", "_limits", "_loop", "_head_since",
                 "_timer", "_held", "_body", "_next_head_since")

    def __init__(self, inner: asyncio.Protocol, census: Census, limits: ConnectionLimits,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.over_limit = False  # opened while `max_connections` others were: its requests get 503
        self.busy = False  # a request of this connection is being handled
        self._census = census
        self._limits = limits
        self._loop = loop
        self._head_since: float | None = None  # when the head now arriving began
        self._timer: asyncio.TimerHandle | None = None
        self._held: asyncio.TimerHandle | None = None  # reading resumes when it fires
        self._body: StreamReader | None = None  # the body of the request being handled
        self._next_head_since: float | None = None  # when bytes past that body began to come: the next head

    # -- asyncio.Protocol: everything goes on to aiohttp's handler ---------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._census.open += 1
        self.over_limit = self._census.open > self._limits.max_connections
        self.transport = transport  # type: ignore[assignment]
        self._head_began()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            if self._head_since is None:  # a head begins (`_head_began`, inline: this runs for every request)
                self._head_since = self._loop.time()
                if self._timer is None:
                    self._timer = self._loop.call_at(self._head_since + self._limits.header_timeout,
                                                     self._check_head)
        elif self._next_head_since is None and (self._body is None or self._body.is_eof()):
            # Its request's body had all come before these bytes: they begin the next head (pipelined),
            # to be timed from now, once the handler is done.
            self._next_head_since = self._loop.time()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._census.open -= 1
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held is not None:
            self._census.waiting.release(self)
        self.inner.connection_lost(exc)

    # -- what the guard tells it ---------------------------------------------------------------
    def started(self, body: StreamReader | None = None) -> None:
        """A request's head is complete and its handler runs (`body`: what it reads its body from)."""
        self.busy = True
        self._head_since = self._next_head_since = None
        self._body = body

    def finished(self) -> None:
        """Its handler is done; a next head that began meanwhile is timed from its first byte."""
        self.busy = False
        self._body = None
        if self._next_head_since is not None:
            self._head_began(since=self._next_head_since)
            self._next_head_since = None

    def hold(self, retry_after: float, queue: str | None = None) -> float:
        """Read nothing more from this connection for a while: its request was refused for overload by
        `queue` (None: not for want of room). The wait to tell the client (`Retry-After`): see `WaitingRoom`."""
        return self._census.waiting.hold(self, queue, retry_after)

    def pause(self, until: asyncio.TimerHandle) -> bool:
        """Stop reading until `resume` (`until` calls it); False, and `until` cancelled, if it cannot be held."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._held is not None:
            until.cancel()
            return False
        transport.pause_reading()
        self._held = until
        return True

    def resume(self) -> None:
        if self._held is None:
            return
        self._held.cancel()
        self._held = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- the head timer ----------------------------------------------------------------------------
    def _head_began(self, since: float | None = None) -> None:
        self._head_since = self._loop.time() if since is None else since
        if self._timer is None:
            self._timer = self._loop.call_at(self._head_since + self._limits.header_timeout, self._check_head)

    def _check_head(self) -> None:
        self._timer = None
        since = self._head_since
        if since is None or self.busy or self.transport is None:
            return
        due = since + self._limits.header_timeout
        if self._loop.time() < due:  # a later head began after the one this timer was set for
            self._timer = self._loop.call_at(due, self._check_head)
            return
        log.debug("closing a connection whose request head took over %g s (--header-timeout)",
                  self._limits.header_timeout)
        self.transport.close()


def connection_of(request: web.BaseRequest) -> Connection | None:
    """The `Connection` a request came on (None once it is gone, or outside a `ListeningSite`)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Connection) else None


class ListeningSite(web.BaseSite):
    """aiohttp's TCP site, with every connection a `Connection` and the backlog, limits and TLS of `limits`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits,
                 room: Room | None = None) -> None:
        """`room`: how many requests a queue takes before it is half full, to let held connections in early."""
        super().__init__(runner, ssl_context=limits.ssl_context, backlog=limits.backlog)
        self.host = host
        self.port = port
        self.limits = limits
        self.room = room
        self.http_runner = runner

    @property
    def name(self) -> str:
        return f"{'https' if self.limits.ssl_context else 'http'}://{self.host}:{self.port}"


    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        handler = self.http_runner.server
        assert handler is not None, "the runner is not set up"
        census, limits = Census(WaitingRoom(self.room, loop)), self.limits

        def connection() -> Connection:
            return Connection(handler(), census, limits, loop)

        extra: dict[str, Any] = {}
        if limits.ssl_context is not None:
            extra["ssl_handshake_timeout"] = limits.header_timeout
        self._server = await loop.create_server(
            connection, self.host, self.port, ssl=limits.ssl_context, backlog=limits.backlog,
            reuse_address=True, **extra,
        )
