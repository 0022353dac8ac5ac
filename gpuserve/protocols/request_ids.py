"""Every request has an id: the client's `X-Request-ID` when it sends a usable one, else a new one.

The id goes back in the response header, in error bodies and in the log lines
about the request (the access log reads it from the response header).
"""

from __future__ import annotations

import itertools
import os

from aiohttp import web

HEADER = "X-Request-ID"
MAX_LENGTH = 128
# Unique within this server's run, without a system call per request: a random
# prefix drawn once, then a counter.
_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The request's id (the client's if it is printable ASCII of at most 128 characters)."""
    given = request.headers.get(HEADER)
    if given and len(given) <= MAX_LENGTH and given.isascii() and given.isprintable():
        return given
    return f"{_PREFIX}-{next(_counter):x}"
