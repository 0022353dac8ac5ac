"""The bundled example, served for real, answers exactly what the model computes in-process."""

import concurrent.futures
import random
import sys

import numpy as np
import pytest

from serving import ROOT, serve

torch = pytest.importorskip("torch")
EXAMPLE = ROOT / "examples" / "classifier"
sys.path.insert(0, str(EXAMPLE))
from model import FEATURES, build_model, predict  # noqa: E402


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    with serve("app:Classifier", cwd=EXAMPLE, log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


def rows(n, seed=7):
    rng = random.Random(seed)
    return [[rng.uniform(-2, 2) for _ in range(FEATURES)] for _ in range(n)]


def test_served_output_equals_an_in_process_forward_pass(classifier):
    model = build_model()
    for row in rows(5):
        reply = classifier.post("predict", {"x": [row]})
        assert reply.status == 200
        [expected] = predict(model, np.array([row], dtype=np.float32), torch.device("cpu"))
        assert reply.body == [expected]


def test_concurrent_requests_each_get_their_own_answer(classifier):
    model = build_model()
    data = rows(48, seed=11)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda r: classifier.post("predict", {"x": [r]}), data))
    expected = predict(model, np.array(data, dtype=np.float32), torch.device("cpu"))
    for reply, want in zip(replies, expected):
        assert reply.status == 200
        assert reply.body[0]["label"] == want["label"]
        assert reply.body[0]["probabilities"] == pytest.approx(want["probabilities"], rel=1e-5)


def test_without_a_gpu_it_says_once_that_it_serves_on_the_cpu(classifier):
    lines = [l for l in classifier.log().splitlines() if "Serving on the CPU" in l]
    assert len(lines) == 1
