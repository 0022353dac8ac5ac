"""Streaming APIs over HTTP: a generator method's values, each sent as soon as it is yielded.

`POST /<api>` of a generator method answers with a stream in the format its
`Accept` header asks for:

- `text/event-stream` (Server-Sent Events; the default, also for `*/*` or no
  `Accept`): one event `data: <json>` per value. A failure mid-stream is an
  event `event: error` whose data is `{"error", "type", "request_id"}` (`type`:
  the exception the method raised) or, when a limit ended the stream,
  `{"error", "reason", "request_id"}`. Every stream ends with the event
  `data: [DONE]`, after an error too; a stream cut short without it was cut
  by the network.
- `application/x-ndjson`: one JSON value per line. A failure mid-stream is a
  last line of the same object; the response ends after the last line.

Until its first value the request is answered like any other (a refusal with
its status, 503 with `Retry-After` when the API has `--max-streams` streams
open, 504 when its deadline passes, 500 when the method raises): the headers
leave with the first value. The deadline (`--timeout`, `X-Request-Timeout`)
is the time to the first value; then `--stream-gap-timeout` bounds the
silence between two values and `--stream-timeout` the whole stream
(`batching/streams.py`). A client that disconnects leaves its stream: the
replica stops making its values before the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from aiohttp import web

from gpuserve.batching import ItemFailed, Refused, Stream
from gpuserve.outcomes import Encoder
from gpuserve.protocols.errors import json_error, refusal
from gpuserve.protocols.json_codec import BadRequest, argument_decoder, encode_event, encode_line
from gpuserve.protocols.guards import GUARDS, BodyRefused, Guards, add_route, read_body
from gpuserve.protocols.native import (
    TIMEOUT_HEADER,
    Handler,
    body_refused,
    closing,
    failed,
    log_failure,
    parse_timeout,
    refused,
    taking,
)
from gpuserve.protocols.request_ids import HEADER, request_id
from gpuserve.service import ApiSpec

if TYPE_CHECKING:
    from gpuserve.state import ServerState

log = logging.getLogger("gpuserve.api")


@attrs.frozen
class StreamFormat:
    content_type: str
    encoder: Encoder  # one value, beside the model
    error: Callable[[bytes], bytes]  # the JSON of an error body, framed
    end: bytes  # after the last value (and after an error)


SSE = StreamFormat("text/event-stream", encode_event, lambda body: b"event: error\ndata: " + body + b"\n\n",
                   b"data: [DONE]\n\n")
NDJSON = StreamFormat("application/x-ndjson", encode_line, lambda body: body + b"\n", b"")
# What each media range of an `Accept` header gets; anything else alone is refused (406).
_ACCEPTED = {"text/event-stream": SSE, "application/x-ndjson": NDJSON, "*/*": SSE, "text/*": SSE,
             "application/*": NDJSON}
OFFERED = (SSE.content_type, NDJSON.content_type)


def negotiate(accept: str | None) -> StreamFormat | None:
    """The format an `Accept` header asks for, by its q-values (ties: the first named); None if neither."""
    if not accept:
        return SSE
    best, best_q = None, 0.0
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        form = _ACCEPTED.get(media.lower())
        if form is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = form, q
    return best


def _stream_handler(api: ApiSpec, state: ServerState, guards: Guards) -> Handler:
    batcher = state.batcher
    settings = state.deployment.settings
    name = api.name
    decode = argument_decoder(api)

    async def handle(request: web.Request) -> web.StreamResponse:
        rid = request_id(request)
        not_taken = taking(state, guards, request, rid)
        if not_taken is not None:
            return not_taken
        form = negotiate(request.headers.get("Accept"))
        if form is None:
            return json_error(406, f"{name!r} streams: accept one of {list(OFFERED)}", rid, allowed=list(OFFERED))
        try:
            own = request.headers.get(TIMEOUT_HEADER)
            timeout = None if own is None else parse_timeout(own, settings.request_timeout_cap)
            probe = batcher.admit(name)  # before the body is read: a refusal reads nothing
            body = await read_body(request, settings.max_body_size, settings.body_timeout)
            kwargs, rows = decode(body)
            del body
            batcher.open_stream(name)
        except BadRequest as exc:
            return closing(state, json_error(400, str(exc), rid, errors=exc.errors))
        except Refused as exc:
            return closing(state, refused(request, exc, rid, name))
        except BodyRefused as exc:
            return body_refused(exc, rid)
        try:
            try:
                # A client that leaves before the first value cancels this handler and
                # so the future: the batcher drops the request, or the replica its stream.
                future = batcher.submit(name, kwargs, form.encoder, timeout, rows, rid, probe=probe)
                stream = await future
            except ItemFailed as exc:
                return closing(state, failed(name, rid, exc, guards))
            except Refused as exc:
                return closing(state, refusal(exc, rid))
            except asyncio.CancelledError:
                _leave_unread(future)
                raise
            try:
                return await _send(request, stream, form, name, rid, guards)
            finally:
                stream.close()  # over, or its client left: it stops taking part
        finally:
            batcher.close_stream(name)

    return handle


def _leave_unread(future: asyncio.Future[Stream]) -> None:
    """The client left just as its stream started (its first value came, this handler had not woken):
    the stream leaves as well, or it would wait for a reader forever."""
    if future.done() and not future.cancelled() and future.exception() is None:
        future.result().close()


async def _send(request: web.Request, stream: Stream, form: StreamFormat, name: str, rid: str,
                guards: Guards) -> web.StreamResponse:
    response = web.StreamResponse(headers={HEADER: rid, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.content_type = form.content_type
    await response.prepare(request)  # sent with the first value: it is here already
    write = response.write
    while values := await stream.read():
        await write(values[0] if len(values) == 1 else b"".join(values))
    error = stream.error
    if error is not None:
        await write(form.error(orjson.dumps(_error_body(name, rid, error, guards))))
    if form.end:
        await write(form.end)
    await response.write_eof()
    return response


def _error_body(name: str, rid: str, error: ItemFailed | Refused, guards: Guards) -> dict[str, Any]:
    if isinstance(error, ItemFailed):
        log_failure(name, rid, error, " mid-stream")
        body = {"error": f"{name!r} failed: {guards.public(str(error))}", "type": error.failure.type, "request_id": rid}
        if guards.debug_errors:
            body["traceback"] = error.failure.traceback
        return body
    log.warning("the stream of %r for request %s ended early: %s", name, rid, error)
    return {"error": str(error), "reason": error.reason.value, "request_id": rid}


def add_stream_routes(app: web.Application, state: ServerState) -> None:
    """`POST /<api>` for each streaming API (the others are `native.py`'s)."""
    guards = app.get(GUARDS) or Guards()
    for api in state.deployment.spec.apis.values():
        if api.streams:
            add_route(app, "POST", f"/{api.name}", _stream_handler(api, state, guards), names_requests=True)
