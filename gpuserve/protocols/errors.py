"""Where refusals become HTTP: one status per `Reason`, and the JSON error body every route answers with."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from gpuserve.batching import Reason, Refused

# Every reason a request may be answered without its result, and its status.
STATUS = {
    Reason.QUEUE_FULL: 503,
    Reason.LATENCY: 503,
    Reason.EXECUTOR_LOST: 503,
    Reason.SHUTTING_DOWN: 503,
    Reason.DEADLINE: 504,
    Reason.CANCELLED: 499,  # never sent: the client is gone; nginx's number, for logs
}


def json_error(status: int, message: str, *, retry_after: float | None = None, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else None
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message, **extra}),
        content_type="application/json",
        headers=headers,
    )


def refusal(exc: Refused) -> web.Response:
    """The answer to a refused request: its status, and `Retry-After` when a retry may work (503)."""
    status = STATUS[exc.reason]
    retry_after = exc.retry_after if status == 503 else None
    return json_error(status, str(exc), retry_after=retry_after, reason=exc.reason.value)
