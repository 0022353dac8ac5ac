"""Why a request is answered without its result, in words a protocol can map to its own status.

Nothing here knows HTTP: `gpuserve.protocols` maps each `Reason` to a status
(and decides on `Retry-After`).
"""

from __future__ import annotations

import enum

from gpuserve.errors import GpuserveError
from gpuserve.outcomes import Failure


class Reason(str, enum.Enum):
    QUEUE_FULL = "queue_full"  # the API's queue holds its limit
    STREAMS_FULL = "streams_full"  # the streaming API has its limit of streams open
    LATENCY = "latency"  # cannot be answered within the API's max_latency_ms
    DEADLINE = "deadline"  # the request's own deadline passed
    EXECUTOR_LOST = "executor_lost"  # its executor died while running it, as the server stops
    SHUTTING_DOWN = "shutting_down"  # the server is stopping
    FAILED = "failed"  # the server has failed (a replica cannot be rebuilt): it cannot serve
    CALL_TIMEOUT = "call_timeout"  # its call ran past the API's call limit; the replica was replaced
    CRASHED = "crashed"  # its input crashed the replica that ran it alone
    QUARANTINED = "quarantined"  # its input crashed replicas twice before: refused without running
    CANCELLED = "cancelled"  # the client left (counted, never answered)


class Refused(GpuserveError):
    """The request was not answered by the model. `retry_after` (seconds): when trying again may work."""

    def __init__(self, reason: Reason, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class ItemFailed(GpuserveError):
    """The user's code raised for this item."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.type}: {failure.message}")
        self.failure = failure
