"""The execution-time model behind `max_latency_ms`: seconds = a + b * batch_size."""

import pytest

from gpuserve.latency import LatencyModel


def fitted(points):
    model = LatencyModel()
    for size, seconds in points:
        model.observe(size, seconds)
    return model


def test_no_prediction_until_there_is_evidence():
    model = LatencyModel()
    assert model.predict(1) is None
    model.observe(4, 0.1)
    model.observe(8, 0.2)
    assert model.predict(4) is None
    model.observe(16, 0.4)
    assert model.predict(4) is not None


def test_fits_a_fixed_cost_plus_a_cost_per_item():
    model = fitted([(size, 0.005 + 0.001 * size) for size in (1, 2, 4, 8, 16, 32) * 3])
    assert model.predict(1) == pytest.approx(0.006)
    assert model.predict(64) == pytest.approx(0.069)  # extrapolates along the line
    assert model.predict(10) == pytest.approx(0.015)


def test_one_size_seen_scales_per_item_above_it_and_never_below_its_cost():
    model = fitted([(4, 0.2)] * 3)
    assert model.predict(4) == pytest.approx(0.2)
    assert model.predict(8) == pytest.approx(0.4)
    assert model.predict(1) == pytest.approx(0.2)


def test_a_batch_never_predicts_faster_than_a_smaller_one():
    noisy = fitted([(1, 0.02), (2, 0.019), (3, 0.018), (4, 0.017)])
    assert noisy.predict(64) >= noisy.predict(1) > 0
    assert noisy.predict(8) == pytest.approx(noisy.predict(2), abs=0.002)  # slope clamped at 0


def test_recent_batches_weigh_more_than_old_ones():
    model = fitted([(size, 0.001 * size) for size in (1, 8) * 50] + [(size, 0.002 * size) for size in (1, 8) * 50])
    assert model.predict(8) == pytest.approx(0.016, rel=0.2)


def test_predictions_that_rest_on_evidence_stop_at_the_largest_batch_seen():
    model = fitted([(1, 0.01)] * 3 + [(8, 0.02)])
    assert model.predict_seen(8) == pytest.approx(model.predict(8))
    assert model.predict_seen(4) == pytest.approx(model.predict(4))
    assert model.predict_seen(9) is None and model.predict(9) is not None
