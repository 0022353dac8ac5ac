"""Inputs that crash replicas: counted, and refused without running once they have crashed two.

An input is known by a digest of its arguments as the protocol decoded them
(the same body decodes to the same arguments). Only inputs that crashed a
replica are remembered, at most `REMEMBERED` per API, the oldest forgotten
first; requests are digested only while some input of their API is
quarantined, so a server that never saw a crash pays nothing for this.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections import OrderedDict
from typing import Any

log = logging.getLogger("gpuserve.batching")

CRASHES_TO_QUARANTINE = 2
REMEMBERED = 1024


def digest(kwargs: dict[str, Any]) -> bytes | None:
    """What identifies an input; None when its arguments cannot be pickled (it cannot be remembered)."""
    try:
        return hashlib.blake2b(pickle.dumps(kwargs, protocol=5), digest_size=16).digest()
    except Exception as exc:  # an argument type pickle does not know: nothing to compare it by
        log.warning("an input that crashed a replica cannot be remembered: %s: %s", type(exc).__name__, exc)
        return None


class Quarantine:
    """One API's inputs that crashed replicas, and how many times each did."""

    def __init__(self) -> None:
        self._crashes: OrderedDict[bytes, int] = OrderedDict()
        self.quarantined = 0  # inputs at or above CRASHES_TO_QUARANTINE

    def crashed(self, kwargs: dict[str, Any], times: int) -> bool:
        """The input crashed `times` more replicas; True when it is now quarantined."""
        key = digest(kwargs)
        if key is None:
            return False
        before = self._crashes.pop(key, 0)
        after = self._crashes[key] = before + times
        if before < CRASHES_TO_QUARANTINE <= after:
            self.quarantined += 1
        while len(self._crashes) > REMEMBERED:
            _, count = self._crashes.popitem(last=False)
            if count >= CRASHES_TO_QUARANTINE:
                self.quarantined -= 1
        return after >= CRASHES_TO_QUARANTINE

    def holds(self, kwargs: dict[str, Any]) -> bool:
        """Whether this input is quarantined (refuse it without running)."""
        if not self.quarantined:
            return False
        key = digest(kwargs)
        return key is not None and self._crashes.get(key, 0) >= CRASHES_TO_QUARANTINE
