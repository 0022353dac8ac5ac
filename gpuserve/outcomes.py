"""What a batch comes back as: per item, its encoded result or its failure.

Executors produce these, the pool hands them up, the batcher settles each
request from them. An `Encoder` is chosen by the protocol that received the
request and applied beside the model (see `executors/replica.py`): a result
never crosses to the event loop, or out of a worker process, unencoded.
"""

from __future__ import annotations

import traceback as _traceback
from collections.abc import Callable
from typing import Any

import attrs

# Turns one item's result into what its protocol sends. Must be picklable by
# reference (a module-level function or a partial of one) to reach a worker process.
Encoder = Callable[[Any], Any]


@attrs.frozen
class Failure:
    """One request's error, as it travels back to the server: its type, message and traceback."""

    type: str
    message: str
    traceback: str = ""  # formatted where it was raised, so that the server logs it even from a worker process

    @classmethod
    def of(cls, exc: BaseException, message: str | None = None) -> "Failure":
        text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, str(exc) if message is None else message, text)


@attrs.frozen
class BatchResult:
    outcomes: list[Any]  # per item, in order: its encoded result, or a Failure; empty when `failure` is set
    exec_s: float  # time spent in the user's method(s)
    # A call of several requests that raised as a whole blames none of them:
    # the batcher runs each again alone, and each answers for itself.
    failure: Failure | None = None
    out_of_memory: bool = False  # the call (the whole batch, or its one request) ran out of memory
