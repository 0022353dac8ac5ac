"""What a batch comes back as: per item, its encoded result or its failure.

Executors produce these, the pool hands them up, the batcher settles each
request from them. An `Encoder` is chosen by the protocol that received the
request and applied beside the model (see `executors/replica.py`): a result
never crosses to the event loop, or out of a worker process, unencoded. A
streaming API's values are encoded the same way, one by one, as they are
yielded; `END` is what its method yields for a request whose stream is over,
and a `StreamWindow` bounds how far its values may run ahead of its readers.
"""

from __future__ import annotations

import collections
import traceback as _traceback
from collections.abc import Callable
from typing import Any

import attrs

# A stream's buffer: the steps its producer may run ahead of its slowest reader,
# and, past the first of them, the bytes those steps may hold.
STREAM_WINDOW = 64
STREAM_WINDOW_BYTES = 1 << 20

# Turns one item's result into what its protocol sends. Must be picklable by
# reference (a module-level function or a partial of one) to reach a worker process.
Encoder = Callable[[Any], Any]


class _End:
    """`gpuserve.END`: yielded by a batchable streaming API in place of a request's value: its stream is over."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "gpuserve.END"


END = _End()


class StreamWindow:
    """The steps a stream has sent past its credit (the steps every reader took), with their bytes.

    Both ends of a stream count them alike: its producer waits while the window
    is full, the event loop knows from the same count when the producer waits.
    """

    __slots__ = ("_sizes", "_first", "_bytes")

    def __init__(self) -> None:
        self._sizes: collections.deque[int] = collections.deque()  # bytes of each step past the credit
        self._first = 0  # the number of the first of them
        self._bytes = 0

    def sent(self, size: int) -> None:
        self._sizes.append(size)
        self._bytes += size

    def full(self, credited: int) -> bool:
        """Whether the producer must wait, now that every reader took `credited` steps."""
        sizes = self._sizes
        if len(sizes) < STREAM_WINDOW and self._bytes < STREAM_WINDOW_BYTES:
            return False  # whatever the credit: the steps it frees are let go when it matters
        while self._first < credited and sizes:
            self._bytes -= sizes.popleft()
            self._first += 1
        return len(sizes) >= STREAM_WINDOW or (bool(sizes) and self._bytes >= STREAM_WINDOW_BYTES)


@attrs.frozen
class Failure:
    """One request's error, as it travels back to the server: its type, message and traceback."""

    type: str
    message: str
    traceback: str = ""  # formatted where it was raised, so that the server logs it even from a worker process

    @classmethod
    def of(cls, exc: BaseException, message: str | None = None) -> "Failure":
        text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, exc_text(exc) if message is None else message, text)


def exc_text(exc: BaseException) -> str:
    """`str(exc)`, or a stand-in when the exception cannot say (its `__str__` raised): a failure must travel."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__}: its str() raised>"


@attrs.frozen
class BatchResult:
    outcomes: list[Any]  # per item, in order: its encoded result, or a Failure; empty when `failure` is set
    exec_s: float  # time spent in the user's method(s)
    # A call of several requests that raised as a whole blames none of them:
    # the batcher runs each again alone, and each answers for itself.
    failure: Failure | None = None
    out_of_memory: bool = False  # the call (the whole batch, or its one request) ran out of memory
