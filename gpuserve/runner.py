"""Run an application until a signal or a failure, then stop it within its budget.

What `aiohttp.web.run_app` does, with what a model server needs beside it:
a port that cannot be bound, and a server that failed (replicas that cannot
be built), end the process with one line and a non-zero status (no traceback,
no signal sent to itself); SIGINT and SIGTERM stop it in order
(`lifecycle.py`), within `--drain-timeout`: should anything in the process
refuse to end, it exits anyway `EXIT_MARGIN_S` after the budget.
It listens with the backlog, connection limit, timeouts and TLS of the settings
(`protocols/connections.py`).
"""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import logging
import os
import signal
import sys
import threading

from aiohttp import http_writer, web, web_response

from gpuserve import lifecycle
from gpuserve.eventloop import new_event_loop
from gpuserve.protocols.connections import (
    ConnectionLimits,
    ListeningSite,
    default_max_connections,
    open_file_limit,
    tls_context,
)
from gpuserve.settings import Settings
from gpuserve.state import EXIT_MARGIN_S, STATE, ServerState

log = logging.getLogger("gpuserve")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Who, what, the answer, its size, the time taken, and the request's id (as the response carries it).
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs id=%{X-Request-ID}o'
access_log = logging.getLogger("gpuserve.access")
SERVER_NAME = "gpuserve"  # the `Server` header: no versions for a scanner to match


def serve(app: web.Application, settings: Settings) -> str | None:
    """Serve `app` until stopped; None after a clean stop, else why it could not serve."""
    # A crash in native code (a segfault, an abort) at least leaves every thread's traceback on stderr.
    faulthandler.enable(all_threads=True)
    # aiohttp's default for the header, in every response it writes (its own
    # answers to malformed requests too), names Python's version and its own.
    web_response.SERVER_SOFTWARE = SERVER_NAME
    if sys.version_info < (3, 12):
        # aiohttp copies every response's head and body into one buffer before writing them where
        # asyncio's `writelines` is unsafe (CVE-2024-12254: Python 3.12 before 3.12.9, 3.13 before 3.13.2)
        # and, it says, no faster. Before 3.12, asyncio's transports join the pieces themselves (the same
        # copy), and uvloop's write them in one writev without it: 602 KB less copied per image answer.
        http_writer.SKIP_WRITELINES = False
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_serve(app, settings))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


async def _serve(app: web.Application, settings: Settings) -> str | None:
    state = app[STATE]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if settings.exit_on_failure:
        state.on_failure = lambda _reason: stop.set()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        app,
        # A logger that would drop every line costs a call per request for nothing: none at all then.
        access_log=access_log if settings.access_log and access_log.isEnabledFor(logging.INFO) else None,
        access_log_format=ACCESS_LOG_FORMAT,
        handler_cancellation=True,  # a client that leaves cancels its request
        shutdown_timeout=state.stop.http_s,  # the batcher has answered every request by then
        keepalive_timeout=settings.keepalive_timeout,
    )
    try:
        await runner.setup()
        try:
            site = ListeningSite(runner, settings.host, settings.port, _limits(settings), room=state.batcher.below_half)
        except OSError as exc:  # ssl.SSLError is one
            state.fail(f"cannot serve HTTPS with --ssl-certfile {settings.ssl_certfile} and --ssl-keyfile "
                       f"{settings.ssl_keyfile}: {exc}")
            return state.failure
        try:
            await site.start()
        except OSError as exc:
            state.fail(_cannot_listen(settings, exc))
        else:
            host, port = runner.addresses[0][:2]
            log.info("serving on %s://%s:%d (at most %d connections)", "https" if settings.ssl_certfile else "http",
                     host, port, site.limits.max_connections)
            await stop.wait()
            state.begin_stop(loop.time())
            _exit_at_the_latest(state.stop.total_s + EXIT_MARGIN_S, state)
            if state.failure is None:
                log.info("stopping: finishing accepted requests within %g s (--drain-timeout)", state.stop.total_s)
            for listening in list(runner.sites):  # no new connections; open ones get 503 and are closed
                await listening.stop()
            await lifecycle.drain(app)
    finally:
        await runner.cleanup()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
    return state.failure


def _exit_at_the_latest(seconds: float, state: ServerState) -> None:
    """End the process after `seconds` if it has not ended: the stop's promise, whatever will not end."""

    def force() -> None:
        # Straight to the file descriptor: whatever hangs may hold a lock of `logging`.
        os.write(2, f"gpuserve: the stop ran {EXIT_MARGIN_S:g} s past --drain-timeout; exiting now\n".encode())
        os._exit(1 if state.failure is not None else 0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def _limits(settings: Settings) -> ConnectionLimits:
    """Connection limits from the settings, with the open-file limit raised as far as it goes."""
    tls = tls_context(settings.ssl_certfile, settings.ssl_keyfile) if settings.ssl_certfile else None
    files = open_file_limit()
    most = settings.max_connections or default_max_connections(files)
    if most > default_max_connections(files):
        log.warning("--max-connections %d leaves the server few of its %d open files: past them, new "
                    "connections are refused by the kernel without an answer", most, files)
    return ConnectionLimits(settings.backlog, most, settings.header_timeout, tls)


def _cannot_listen(settings: Settings, exc: OSError) -> str:
    where = f"{settings.host}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use (choose another with --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine (--host)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
