"""Requests run again alone: after their batch raised as a whole, or lost its replica.

A call of several requests that raises as a whole (an error, running out of
memory, a wrong number of results) does not say which request is to blame.
Each of its requests runs once more, alone and first in its queue, and
answers for itself: a healthy request runs at most twice, and no answer tells
one client about the others' requests.

A batch whose worker process died is handled the same way: its requests run
again alone, on another replica or the rebuilt one. A request that was alone
when its replica died crashed it (when the process ended itself; one killed
from outside, by an operator or the kernel's out-of-memory killer, gets one
more run alone first). It is answered 500, saying so and without
`Retry-After`, and its input counts as having crashed every replica it ran on;
an input that crashed two is refused from then on without running
(`quarantine.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gpuserve.batching.quarantine import Quarantine
from gpuserve.batching.queue import QUEUED, ApiQueue, Pending
from gpuserve.batching.refusals import Reason, Refused
from gpuserve.pool import ExecutorDied

if TYPE_CHECKING:
    from gpuserve.batching.admission import OomSuspect

log = logging.getLogger("gpuserve.batching")


class Rerun:
    """What a request running again alone carries from the batch it failed in."""

    __slots__ = ("crashes", "oom")

    def __init__(self, crashes: int, oom: OomSuspect | None) -> None:
        self.crashes = crashes  # replicas lost while running it so far
        self.oom = oom  # its batch ran out of memory: running out alone clears the batch's size of blame


def again_alone(queue: ApiQueue, batch: Sequence[Pending], crashes: int = 0, oom: OomSuspect | None = None) -> int:
    """Put the requests of `batch` still waiting for an answer back first in `queue`, each to run alone once."""
    live = []
    for item in batch:
        if not item.future.done():
            live.append(item)
        elif item.future.cancelled():  # the client left while it ran
            queue.stats.outcomes[Reason.CANCELLED.value] += 1
    for item in reversed(live):
        item.rerun = Rerun(crashes, oom)
        item.state = QUEUED
        queue.items.appendleft(item)
    queue.stats.reruns += len(live)
    return len(live)


def lost(queue: ApiQueue, batch: Sequence[Pending], died: ExecutorDied) -> None:
    """The replica running `batch` died: run its requests again alone, or answer the one that crashed it."""
    if len(batch) > 1:
        count = again_alone(queue, batch, crashes=1)
        log.error("%s; running the %d request(s) of its batch again, each alone", died, count)
        return
    item = batch[0]
    crashes = (item.rerun.crashes if item.rerun is not None else 0) + 1
    if item.future.done():
        again_alone(queue, batch)  # only counts a client that left
    elif not died.self_inflicted and crashes < 2:
        again_alone(queue, batch, crashes)
        log.error("%s, killed from outside while running request %s alone; running it once more",
                  died, item.request_id)
    else:
        _blame(queue, item, crashes, died)


def _blame(queue: ApiQueue, item: Pending, crashes: int, died: ExecutorDied) -> None:
    if queue.quarantine is None:
        queue.quarantine = Quarantine()
    quarantined = queue.quarantine.crashed(item.kwargs, crashes)
    name = queue.api.name
    message = f"{name!r} crashed its replica with this request's input ({died})"
    if quarantined:
        message += "; the same input is refused from now on without running"
    log.error("request %s to %r crashed its replica, alone (%d crash(es) with this input%s): %s",
              item.request_id, name, crashes, ", quarantined" if quarantined else "", died)
    queue.stats.outcomes[Reason.CRASHED.value] += 1
    item.future.set_exception(Refused(Reason.CRASHED, message))


def refuse_quarantined(queue: ApiQueue) -> Refused:
    """The refusal of an input that crashed replicas twice (counted here)."""
    queue.stats.refusals[Reason.QUARANTINED.value] += 1
    return Refused(
        Reason.QUARANTINED,
        f"this input crashed {queue.api.name!r}'s replicas twice; it is refused without running",
    )
