"""Settling requests: each future gets its result, its failure or its refusal, once, and is counted.

A settled item is released at once (`Pending.release`): its arguments and its
answer are never held behind another request.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpuserve.batching.queue import EXPIRED, QUEUED, Pending
from gpuserve.batching.refusals import ItemFailed, Reason, Refused
from gpuserve.outcomes import BatchResult, Failure
from gpuserve.stats import ApiStats

OK, ERROR = "ok", "error"  # outcomes of items that ran, beside the reasons


def settle(batch: Sequence[Pending], result: BatchResult, stats: ApiStats) -> None:
    """Answer every item of a batch that ran from its outcome."""
    ok = failed = left = 0
    for item, outcome in zip(batch, result.outcomes):
        future = item.future
        if future.done():  # deadline passed (counted then) or client left while it ran
            left += future.cancelled()
        elif isinstance(outcome, Failure):
            failed += 1
            future.set_exception(ItemFailed(outcome))
        else:
            ok += 1
            future.set_result(outcome)
        item.release()
    outcomes = stats.outcomes
    outcomes[OK] += ok
    if failed:
        outcomes[ERROR] += failed
    if left:
        outcomes[Reason.CANCELLED.value] += left


def fail(batch: Sequence[Pending], exc: Exception, stats: ApiStats, outcome: str) -> None:
    """Answer every item of a batch that could not run with `exc`, counted as `outcome`."""
    for item in batch:
        if not item.future.done():
            stats.outcomes[outcome] += 1
            item.future.set_exception(exc)
        elif item.future.cancelled():
            stats.outcomes[Reason.CANCELLED.value] += 1
        item.release()


def expire(item: Pending) -> None:
    """The item's deadline passed before it was answered (its future is pending)."""
    item.future.set_exception(Refused(Reason.DEADLINE, f"no answer within the {item.timeout:g} s deadline"))
    queue = item.queue
    if item.state == QUEUED:  # (a running item is released when its batch is settled)
        item.release()
        item.state = EXPIRED
        queue.expired += 1
        queue.stats.refusals[Reason.DEADLINE.value] += 1
        if queue.expired > queue.limit:  # shells behind a live item: the deque stays bounded by the queue
            queue.sweep()
    else:  # running: the answer, when it comes, is dropped
        queue.stats.outcomes[Reason.DEADLINE.value] += 1
