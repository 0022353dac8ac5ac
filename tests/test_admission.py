"""The admission policy in-process: no server, no executor, a clock passed in by hand.

Each test feeds lanes the batch times an executor would report and reads the
decisions the batcher would act on. The end-to-end behaviour is in
test_batching.py and test_deadlines.py; these run in milliseconds.
"""

from __future__ import annotations

import math

import pytest

import gpuserve
from gpuserve.batching import Reason, Refused
from gpuserve.batching.admission import (
    GROUP_BUDGET_S,
    HEAL_AFTER,
    OOM_MEMORY_S,
    PROBE_INTERVAL_S,
    UNBATCHED_MAX_PER_HOP,
    Admission,
)
from gpuserve.outcomes import BatchResult
from gpuserve.service import spec_of
from gpuserve.stats import ApiStats

KEYS = ("cpu:0#0.0", "cpu:1#1.0")


@gpuserve.service(backend="cpu")
class Model:
    @gpuserve.api(batchable=True, max_batch_size=8, max_latency_ms=100)
    def predict(self, x: list[float]) -> list[float]:
        return x

    @gpuserve.api
    def one(self, x: float) -> float:
        return x


def admission(api: str = "predict", keys=KEYS, limit: int = 1000):
    policy_of = Admission(keys)
    policy = policy_of.add(spec_of(Model).apis[api], limit)
    return policy_of, policy, ApiStats()


def learn(admission_, policy, stats, seconds_per_batch: float, now: float = 0.0, sizes=(1, 4, 8)):
    """Every lane sees batches of `sizes` take `seconds_per_batch` each."""
    for lane in policy.lanes.values():
        for size in sizes:
            admission_.learn(policy, lane, size, BatchResult([None] * size, seconds_per_batch), now, stats)


def test_a_cold_model_admits_everything_without_a_probe():
    admission_, policy, stats = admission()
    assert policy.admit_below == math.inf
    for depth in (0, 10, 999):
        assert admission_.check(policy, depth, now=0.0, stats=stats) is False
    assert not stats.refusals


def test_a_request_that_cannot_make_its_budget_is_refused_with_a_reason_and_retry_after():
    admission_, policy, stats = admission()
    learn(admission_, policy, stats, 0.030)  # a full batch of 8 takes 30 ms on either executor
    # 100 ms budget: a few full rounds fit, many do not.
    assert admission_.check(policy, depth=8, now=1.0, stats=stats) is False
    with pytest.raises(Refused) as refused:
        admission_.check(policy, depth=200, now=0.1, stats=stats)
    assert refused.value.reason is Reason.LATENCY
    assert "max_latency_ms=100" in str(refused.value) and "200 queued" in str(refused.value)
    assert refused.value.retry_after >= 1
    assert stats.refusals == {"latency": 1}


def test_below_the_learned_depth_no_prediction_is_needed_and_the_depth_is_consistent():
    admission_, policy, stats = admission()
    learn(admission_, policy, stats, 0.010)
    assert 0 < policy.admit_below < math.inf
    below = policy.admit_below - 1
    # What admit_below promises, the full prediction agrees with.
    assert admission_.predict_wait(policy, below, now=0.0) <= policy.budget_s


def test_a_refusing_model_lets_one_probe_through_per_interval_without_fresh_evidence():
    admission_, policy, stats = admission()
    learn(admission_, policy, stats, 0.200, now=0.0)  # slower than the whole budget
    assert policy.admit_below == 0
    now = PROBE_INTERVAL_S + 0.5  # nothing learned for longer than the interval
    assert admission_.check(policy, depth=0, now=now, stats=stats) is True  # the probe
    with pytest.raises(Refused):
        admission_.check(policy, depth=0, now=now + 0.01, stats=stats)
    assert admission_.check(policy, depth=0, now=now + PROBE_INTERVAL_S, stats=stats) is True


def test_out_of_memory_lowers_only_that_lanes_ceiling_and_says_so_in_stats():
    admission_, policy, stats = admission()
    oom_lane, other = policy.lanes.values()
    assert admission_.ceiling(policy, oom_lane, depth=100) == 8
    admission_.out_of_memory(policy, oom_lane, 8, now=0.0, stats=stats)
    assert admission_.ceiling(policy, oom_lane, depth=100) == 4  # nothing ran yet: half of what failed
    assert admission_.ceiling(policy, other, depth=100) == 8
    assert stats.batch_ceiling == {oom_lane.key: 4}
    # A batch that failed teaches the latency model nothing.
    assert oom_lane.model.observations == 0


def test_after_out_of_memory_the_ceiling_drops_to_the_largest_batch_that_ran():
    admission_, policy, stats = admission()
    lane = next(iter(policy.lanes.values()))
    admission_.learn(policy, lane, 6, BatchResult([None] * 6, 0.01), now=0.0, stats=stats)
    admission_.out_of_memory(policy, lane, 8, now=0.0, stats=stats)
    assert lane.ceiling == 6


def succeed(admission_, policy, lane, stats, batches, now=0.0):
    """`batches` batches that fill the lane's ceiling run without running out of memory."""
    for _ in range(batches):
        size = lane.ceiling
        admission_.learn(policy, lane, size, BatchResult([None] * size, 0.01), now=now, stats=stats)


def test_a_lowered_ceiling_rises_as_full_batches_run_but_stays_below_what_ran_out_of_memory():
    admission_, policy, stats = admission()
    lane = next(iter(policy.lanes.values()))
    admission_.out_of_memory(policy, lane, 8, now=0.0, stats=stats)
    assert lane.ceiling == 4
    succeed(admission_, policy, lane, stats, HEAL_AFTER - 1)
    assert lane.ceiling == 4  # not yet
    succeed(admission_, policy, lane, stats, 1)
    assert lane.ceiling == 6  # halfway to the 8 rows that ran out of memory
    succeed(admission_, policy, lane, stats, HEAL_AFTER)
    assert lane.ceiling == 7
    succeed(admission_, policy, lane, stats, 3 * HEAL_AFTER)
    assert lane.ceiling == 7 and stats.batch_ceiling == {lane.key: 7}  # 8 is remembered as too big
    succeed(admission_, policy, lane, stats, HEAL_AFTER, now=OOM_MEMORY_S)
    assert lane.ceiling == 8 and stats.batch_ceiling == {}  # forgotten after a while: tried again


def test_batches_below_a_lowered_ceiling_do_not_raise_it():
    admission_, policy, stats = admission()
    lane = next(iter(policy.lanes.values()))
    admission_.out_of_memory(policy, lane, 8, now=0.0, stats=stats)
    for _ in range(4 * HEAL_AFTER):
        admission_.learn(policy, lane, 2, BatchResult([None] * 2, 0.01), now=0.0, stats=stats)
    assert lane.ceiling == 4  # light load: the ceiling never limited anything, nothing to learn


def test_a_request_that_runs_out_of_memory_alone_clears_its_batchs_size_of_blame():
    admission_, policy, stats = admission()
    lane = next(iter(policy.lanes.values()))
    suspect = admission_.out_of_memory(policy, lane, 8, now=0.0, stats=stats)
    assert lane.ceiling == 4
    admission_.oom_explained(policy, suspect, stats)
    assert lane.ceiling == 8 and lane.too_big is None and stats.batch_ceiling == {}
    admission_.oom_explained(policy, suspect, stats)  # a second one changes nothing
    assert lane.ceiling == 8


def test_a_model_that_has_seen_only_single_requests_admits_a_first_burst():
    admission_, policy, stats = admission()
    # 30 ms per single request, mostly fixed cost: scaled to a batch of 8 it would predict
    # 240 ms per batch against a 100 ms budget; a batch it has not seen is not evidence.
    learn(admission_, policy, stats, 0.030, sizes=(1, 1, 1))
    for depth in range(64):
        assert admission_.check(policy, depth, now=0.0, stats=stats) is False
    assert not stats.refusals
    assert admission_.predict_wait(policy, 0, now=0.0) == pytest.approx(0.030)  # what it has seen, it predicts


def test_unbatched_calls_share_a_hop_as_far_as_their_cost_allows():
    cheap, policy, stats = admission("one")
    # One call per hop until a call's cost is known: a hop is then one call, as the watchdog's limit assumes.
    assert cheap.ceiling(policy, next(iter(policy.lanes.values())), depth=100) == 1
    learn(cheap, policy, stats, 0.00001, sizes=(1, 2, 4))
    lane = next(iter(policy.lanes.values()))
    assert lane.group == UNBATCHED_MAX_PER_HOP
    # Shared out between the executors when little is queued.
    assert cheap.ceiling(policy, lane, depth=10) == 5

    costly, policy, stats = admission("one")
    learn(costly, policy, stats, GROUP_BUDGET_S * 2, sizes=(1, 2, 4))
    assert costly.ceiling(policy, next(iter(policy.lanes.values())), depth=100) == 1


def test_busy_executors_delay_the_predicted_wait_until_one_is_free():
    admission_, policy, stats = admission()
    learn(admission_, policy, stats, 0.010)
    idle = admission_.predict_wait(policy, 0, now=0.0)
    lanes = list(policy.lanes.values())
    for lane in lanes:
        admission_.start(lane, 8, now=0.0)
    assert admission_.free_in(now=0.004) == pytest.approx(0.006)
    assert admission_.predict_wait(policy, 0, now=0.004) == pytest.approx(idle + 0.006)
    admission_.finish(lanes[0])
    assert admission_.free_in(now=0.004) == 0.0


def test_an_item_too_late_to_start_is_refused_and_counted():
    admission_, policy, stats = admission()
    refusal = admission_.late(policy, depth=3, now=0.0, stats=stats, predicted=0.2, waited_s=0.05)
    assert refusal.reason is Reason.LATENCY and "could not start in time" in str(refusal)
    assert stats.refusals == {"latency": 1}
