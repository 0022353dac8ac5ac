"""Where refusals become HTTP: one status per `Reason`, and the JSON error body every route answers with."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from gpuserve.batching import Reason, Refused
from gpuserve.protocols.request_ids import HEADER

# Every reason a request may be answered without its result, and its status.
STATUS = {
    Reason.QUEUE_FULL: 503,
    Reason.STREAMS_FULL: 503,
    Reason.LATENCY: 503,
    Reason.EXECUTOR_LOST: 503,
    Reason.SHUTTING_DOWN: 503,
    Reason.FAILED: 503,
    Reason.DEADLINE: 504,
    Reason.CALL_TIMEOUT: 504,  # the model did not answer in time; retrying would only tie up a replica again
    Reason.CRASHED: 500,  # the request's own input crashed the replica: no Retry-After
    Reason.QUARANTINED: 422,  # the same input crashed replicas twice: it will not be run
    Reason.CANCELLED: 499,  # never sent: the client is gone; nginx's number, for logs
}


def json_error(status: int, message: str, request_id: str | None = None, *, retry_after: float | None = None,
               **extra: Any) -> web.Response:
    """`{"error": message, "request_id": ..., **extra}` with its status (and `Retry-After` when given)."""
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(math.ceil(retry_after))
    body: dict[str, Any] = {"error": message, **extra}
    if request_id is not None:
        body["request_id"] = headers[HEADER] = request_id
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def refusal(exc: Refused, request_id: str | None = None) -> web.Response:
    """The answer to a refused request: its status, and `Retry-After` when a retry may work (503)."""
    status = STATUS[exc.reason]
    retry_after = exc.retry_after if status == 503 else None
    return json_error(status, str(exc), request_id, retry_after=retry_after, reason=exc.reason.value)
