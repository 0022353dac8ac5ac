"""Admission: what the batcher has learned about each (API, executor), and what it admits.

`max_latency_ms` is kept by refusing early what a learned model of execution
time says cannot make it, instead of queueing work that will be late. What is
learned lives in one `Lane` per (API, executor): its latency model, its batch
ceiling after an out-of-memory error, and how many unbatched calls share one
hop to it. `Admission` turns lanes into decisions:

- at the door (`check`): admit, admit as a probe, or refuse for latency;
- when a batch is taken (`ceiling`, `late`): how many items it may hold, and
  whether one item can no longer start in time;
- after it ran (`learn`): feed the lane, and recompute the depth below which
  the door needs no prediction at all (`admit_below`).

Predictions of batchable APIs rest on evidence: none is made for a batch
larger than any the lane has run (`LatencyModel.predict_seen`), so a model
that has seen only single requests never refuses the first burst; it admits,
and learns from what runs. (Unbatched calls that share a hop run one after
another: their cost grows with their number, so their predictions may.)

The batch ceiling after running out of memory, per lane, in rows:

- a batch of `n` rows runs out of memory as a whole: the ceiling drops to
  `n // 2`, or to the largest smaller batch that ran since the last such
  error when that is more, and `n` is remembered as too big for
  `OOM_MEMORY_S`. Its requests then run alone
  (`rerun.py`); if one of them runs out of memory alone, that request, not
  the batch's size, was to blame, and the lane is restored as it was;
- every `HEAL_AFTER` batches in a row that fill the ceiling and run, it rises:
  it doubles, but while a too-big size is remembered only halfway to it, and
  never above `max_batch_size`.

Everything here is arithmetic on the event loop's clock, passed in as `now`,
so the policy runs in tests without a server or an executor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from gpuserve.batching.refusals import Reason, Refused
from gpuserve.latency import LatencyModel
from gpuserve.outcomes import BatchResult
from gpuserve.service import ApiSpec
from gpuserve.stats import ApiStats

log = logging.getLogger("gpuserve.batching")

UNBATCHED_PER_HOP = 16  # unbatched calls per hop the door's predictions count with
# A group of unbatched calls answers together, so it holds its first answer
# back by the others' time: groups grow only as far as this allows.
GROUP_BUDGET_S = 0.002
UNBATCHED_MAX_PER_HOP = 64
PROBE_INTERVAL_S = 1.0  # at most one request per interval runs against a refusing latency model
ROWS_WEIGHT = 0.1  # how much each batch moves the average of rows per request
HEAL_AFTER = 8  # batches in a row that fill a lowered ceiling and run before it rises
OOM_MEMORY_S = 60.0  # how long a batch size that ran out of memory keeps the ceiling below it


class Lane:
    """What one executor has learned about one API."""

    __slots__ = ("key", "model", "predict", "ceiling", "group", "fitted", "too_big", "too_big_at", "streak")

    def __init__(self, key: str, per_hop: int, batchable: bool = True, group: int = 1) -> None:
        self.key = key
        self.model = LatencyModel()  # execution time against batch size
        # Seconds for a batch of a size, or None: what admission decides on (see the module).
        self.predict = self.model.predict_seen if batchable else self.model.predict
        self.ceiling = per_hop  # batch size cap, lowered after an out-of-memory error
        # Unbatched calls per hop, from the latency model; one until it knows
        # what a call costs, so that a hop is one call as the watchdog's limit assumes.
        self.group = group
        self.fitted = 0  # the most rows that ran (since the last out-of-memory error)
        self.too_big: int | None = None  # the fewest rows that ran out of memory, while remembered
        self.too_big_at = 0.0
        self.streak = 0  # batches in a row that filled the ceiling and ran


class OomSuspect:
    """A batch that ran out of memory as a whole, and its lane as it was: a request alone may clear it."""

    __slots__ = ("lane", "ceiling", "fitted", "too_big", "too_big_at", "cleared")

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.ceiling, self.fitted, self.too_big, self.too_big_at = (
            lane.ceiling, lane.fitted, lane.too_big, lane.too_big_at)
        self.cleared = False


class ApiAdmission:
    """One API's admission state."""

    __slots__ = ("api", "per_hop", "budget_s", "limit", "lanes", "next_probe", "last_learned", "admit_below",
                 "rows_per_request", "_fastest")

    def __init__(self, api: ApiSpec, keys: Iterable[str], limit: int) -> None:
        self.api = api
        # Rows handed to an executor at once. An API that is not batchable is
        # still called once per request (one row), but a group of them shares one hop.
        # A stream's length says nothing about the cost of a call (its batches are
        # never learned from), so unbatched streams go in the largest groups.
        self.per_hop = api.max_batch_size if api.batchable else (
            UNBATCHED_MAX_PER_HOP if api.streams else UNBATCHED_PER_HOP)
        self.budget_s = api.max_latency_ms / 1000
        self.limit = limit
        # Streams are never learned from, nor watched by the watchdog: theirs start at a full hop.
        group = self.per_hop if api.streams else 1
        self.lanes = {key: Lane(key, self.per_hop, api.batchable, group) for key in keys}
        self.next_probe = 0.0  # loop time after which a refused request may run as a probe
        self.last_learned = 0.0  # loop time a lane of this API last learned from a batch
        # Below this depth a new item surely fits its latency budget: no prediction needed.
        self.admit_below = math.inf
        # Queues count requests, batches and predictions count rows: what one request carries, on average.
        self.rows_per_request = 1.0
        self._fastest: dict[int, float | None] = {}  # rows -> seconds; lanes change once per batch

    def saw_batch(self, requests: int, rows: int) -> None:
        if rows != requests or self.rows_per_request != 1.0:
            self.rows_per_request += (rows / requests - self.rows_per_request) * ROWS_WEIGHT

    def learned(self, now: float) -> None:
        """A lane of this API learned from a batch: predictions made before are stale."""
        self.last_learned = now
        self._fastest.clear()

    def fastest(self, size: int) -> float | None:
        """Predicted seconds for a batch of `size` on the fastest lane with evidence."""
        cached = self._fastest
        if size in cached:
            return cached[size]
        found = None
        for lane in self.lanes.values():
            value = lane.predict(size)
            if value is not None and (found is None or value < found):
                found = value
        cached[size] = found
        return found


class Admission:
    """The policy over every API; `busy` holds each running executor's predicted end."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = list(keys)
        self.executors = len(self.keys)
        self.apis: dict[str, ApiAdmission] = {}
        self.busy: dict[str, float | None] = {}  # executor key -> predicted end of its batch (None: unknown)

    def add(self, api: ApiSpec, limit: int) -> ApiAdmission:
        policy = self.apis[api.name] = ApiAdmission(api, self.keys, limit)
        return policy

    # -- at the door -----------------------------------------------------------------
    def check(self, policy: ApiAdmission, depth: int, now: float, stats: ApiStats) -> bool:
        """Admit a request behind `depth` queued ones, or raise `Refused`; True when admitted only as a probe."""
        budget = policy.budget_s
        predicted = self.predict_wait(policy, depth, now)
        if predicted is None or predicted <= budget:
            return False
        # Refused requests never run, so a model with no fresh evidence would
        # never learn that the device got faster: let one through now and then.
        interval = max(budget, PROBE_INTERVAL_S)
        if now - policy.last_learned >= interval and now >= policy.next_probe:
            policy.next_probe = now + interval
            return True
        raise self._too_late(policy, depth, stats, f"cannot answer within max_latency_ms="
                             f"{policy.api.max_latency_ms:g}: predicted {predicted * 1000:.0f} ms with {depth} queued")

    def free_in(self, now: float) -> float:
        """Seconds until some executor is free (0 when one is, or when unknown)."""
        if len(self.busy) < self.executors:
            return 0.0
        return min(max(end - now, 0.0) if end is not None else 0.0 for end in self.busy.values())

    def predict_wait(self, policy: ApiAdmission, depth: int, now: float) -> float | None:
        """Wait for an executor, then for the full batches ahead, then this request's own batch."""
        size = policy.per_hop
        ahead = int(depth * policy.rows_per_request)  # rows queued before this request
        own = policy.fastest(min(ahead + math.ceil(policy.rows_per_request), size))
        if own is None:
            return None
        rounds = ahead // size / self.executors  # full batches ahead, shared by all executors
        full = policy.fastest(size) if rounds else 0.0
        return self.free_in(now) + rounds * (full or own) + own

    def retry_after(self, policy: ApiAdmission, depth: int) -> float:
        """Seconds until the queue has drained, by the latency model; at least 1."""
        full = policy.fastest(policy.per_hop)
        if full is None:
            return 1.0
        rounds = math.ceil(depth * policy.rows_per_request / policy.per_hop / self.executors)
        return max(1.0, math.ceil(rounds * full))

    # -- when a batch is taken -------------------------------------------------------------
    def ceiling(self, policy: ApiAdmission, lane: Lane, depth: int) -> int:
        """How many rows the next batch on `lane` may hold (`depth`: requests queued)."""
        if policy.api.batchable:
            return lane.ceiling
        # Unbatched calls in a group run one after another: share them out.
        return min(lane.group, max(1, -(-depth // self.executors)))

    def late(self, policy: ApiAdmission, depth: int, now: float, stats: ApiStats, predicted: float,
             waited_s: float) -> Refused:
        """The refusal for an item that can no longer start in time (counted here)."""
        return self._too_late(policy, depth, stats, f"could not start in time for max_latency_ms="
                              f"{policy.api.max_latency_ms:g}: predicted {predicted * 1000:.0f} ms to run after "
                              f"{waited_s * 1000:.0f} ms queued")

    def _too_late(self, policy: ApiAdmission, depth: int, stats: ApiStats, why: str) -> Refused:
        stats.refusals[Reason.LATENCY.value] += 1
        return Refused(Reason.LATENCY, f"{policy.api.name!r} {why}", retry_after=self.retry_after(policy, depth))

    def start(self, lane: Lane, size: int, now: float) -> None:
        predicted = lane.predict(size)
        self.busy[lane.key] = now + predicted if predicted is not None else None

    def finish(self, lane: Lane) -> None:
        del self.busy[lane.key]

    # -- after a batch ran -----------------------------------------------------------------
    def learn(self, policy: ApiAdmission, lane: Lane, size: int, result: BatchResult, now: float,
              stats: ApiStats) -> None:
        """A batch of `size` rows ran on `lane` (it did not fail as a whole)."""
        lane.model.observe(size, result.exec_s)
        if not policy.api.batchable:
            lane.group = lane.model.largest_within(GROUP_BUDGET_S, UNBATCHED_MAX_PER_HOP) or lane.group
        elif not result.out_of_memory:
            if size > lane.fitted:
                lane.fitted = size
            if size >= lane.ceiling < policy.per_hop:
                self._heal(policy, lane, now, stats)
        policy.learned(now)
        self._refresh()

    def out_of_memory(self, policy: ApiAdmission, lane: Lane, rows: int, now: float, stats: ApiStats) -> OomSuspect:
        """A batch of `rows` ran out of memory as a whole on `lane`: lower its ceiling (see the module)."""
        suspect = OomSuspect(lane)
        lane.too_big = rows if lane.too_big is None else min(lane.too_big, rows)
        lane.too_big_at = now
        if lane.fitted >= rows:  # what ran before does not fit now
            lane.fitted = 0
        lane.ceiling = min(lane.ceiling, max(lane.fitted, rows // 2, 1))
        lane.streak = 0
        self._show_ceiling(policy, lane, stats)
        log.warning("%s ran out of memory in a batch of %d rows for %r; its batches are capped at %d rows",
                    lane.key, rows, policy.api.name, lane.ceiling)
        return suspect

    def oom_explained(self, policy: ApiAdmission, suspect: OomSuspect, stats: ApiStats) -> None:
        """A request of that batch ran out of memory alone: it, not the batch's size, was to blame."""
        if suspect.cleared:
            return
        suspect.cleared = True
        lane = suspect.lane
        lane.ceiling, lane.fitted, lane.too_big, lane.too_big_at = (
            max(lane.ceiling, suspect.ceiling), suspect.fitted, suspect.too_big, suspect.too_big_at)
        self._show_ceiling(policy, lane, stats)
        log.warning("%s: one request of %r runs out of memory alone; the batch's size was not the cause, "
                    "its batches may hold %d rows again", lane.key, policy.api.name, lane.ceiling)

    def _heal(self, policy: ApiAdmission, lane: Lane, now: float, stats: ApiStats) -> None:
        lane.streak += 1
        if lane.streak < HEAL_AFTER:
            return
        lane.streak = 0
        if lane.too_big is not None and now - lane.too_big_at >= OOM_MEMORY_S:
            lane.too_big = None  # memory frees up, other work ends: try the larger sizes again
        target = min(policy.per_hop, lane.ceiling * 2)
        if lane.too_big is not None:
            target = min(target, (lane.ceiling + lane.too_big) // 2)
        if target > lane.ceiling:
            lane.ceiling = target
            self._show_ceiling(policy, lane, stats)
            log.info("%s: batches of %r may hold %d rows again", lane.key, policy.api.name, target)

    @staticmethod
    def _show_ceiling(policy: ApiAdmission, lane: Lane, stats: ApiStats) -> None:
        """`/stats` lists the lanes whose ceiling is below max_batch_size now."""
        if lane.ceiling < policy.per_hop:
            stats.batch_ceiling[lane.key] = lane.ceiling
        else:
            stats.batch_ceiling.pop(lane.key, None)

    def _refresh(self) -> None:
        """Per API, the depth below which the door admits without a prediction.

        Below it, even after the longest batch any executor may be running,
        the full batches ahead and a full batch of its own fit the budget.
        """
        longest = max(
            (lane.predict(policy.per_hop) or 0.0 for policy in self.apis.values()
             for lane in policy.lanes.values()),
            default=0.0,
        )
        for policy in self.apis.values():
            full = policy.fastest(policy.per_hop)
            spare = policy.budget_s - longest - (full or 0.0)
            if spare < 0:
                policy.admit_below = 0
            elif not full or spare * self.executors / full > policy.limit:
                policy.admit_below = math.inf
            else:
                rounds = math.floor(spare * self.executors / full)  # full batches ahead that fit
                policy.admit_below = int((rounds + 1) * policy.per_hop / policy.rows_per_request)
