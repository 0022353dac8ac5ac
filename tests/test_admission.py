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
from gpuserve.batching.admission import GROUP_BUDGET_S, PROBE_INTERVAL_S, UNBATCHED_MAX_PER_HOP, Admission
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
    admission_.learn(policy, oom_lane, 8, BatchResult([None] * 8, 0.5, oom_ceiling=2), now=0.0, stats=stats)
    assert admission_.ceiling(policy, oom_lane, depth=100) == 2
    assert admission_.ceiling(policy, other, depth=100) == 8
    assert stats.batch_ceiling == {oom_lane.key: 2}
    # A split batch's time teaches the latency model nothing.
    assert oom_lane.model.observations == 0


def test_unbatched_calls_share_a_hop_as_far_as_their_cost_allows():
    cheap, policy, stats = admission("one")
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
