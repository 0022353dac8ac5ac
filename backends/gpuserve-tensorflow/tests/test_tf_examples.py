"""TensorFlow served end to end: the `mirrored-strategy` example, and a service on the GPU."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpuserve.plugin import FAKE_GPUS_ENV
from gpuserve.testing.served import serve

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mirrored-strategy"
ROW = [0.1 * i for i in range(1, 17)]
# The example's weights: linspace(-1, 1) over 16 x 2, bias (0.5, -0.5).
WANT = (np.array([ROW], dtype="float32") @ np.linspace(-1.0, 1.0, 32, dtype="float32").reshape(16, 2)
        + np.array([0.5, -0.5], dtype="float32"))[0]


def real_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FAKE_GPUS_ENV, "CUDA_VISIBLE_DEVICES")}
    return {**env, **extra}


def test_the_mirrored_example_serves_on_the_cpu_fallback(tmp_path: Path) -> None:
    with serve("app:Mirrored", cwd=EXAMPLE, env=real_env(CUDA_VISIBLE_DEVICES=""), log_dir=tmp_path) as server:
        reply = server.post("predict", {"x": [ROW]})
        assert server.log().count("Serving on the CPU") == 1
    assert reply.status == 200
    [answer] = reply.body
    assert len(answer["replicas"]) == 1 and "CPU" in answer["replicas"][0]
    np.testing.assert_allclose(answer["output"], WANT, rtol=1e-5)


@pytest.mark.gpu
def test_the_mirrored_example_mirrors_over_two_gpus(tmp_path: Path, backend) -> None:
    if len(backend.devices()) < 2:
        pytest.skip(f"needs two GPUs; TensorFlow sees {len(backend.devices())}")
    rows = [[(i + j) / 10 for j in range(16)] for i in range(9)]
    with serve("app:Mirrored", cwd=EXAMPLE, env=real_env(), log_dir=tmp_path) as server:
        reply = server.post("predict", {"x": rows})  # one request of 9 rows: split over the replicas
    assert reply.status == 200
    want = np.array(rows, dtype="float32") @ np.linspace(-1.0, 1.0, 32, dtype="float32").reshape(16, 2) + [0.5, -0.5]
    for answer, expected in zip(reply.body, want, strict=True):
        assert [d.endswith(f"GPU:{i}") for i, d in enumerate(answer["replicas"])] == [True, True]
        # TensorFloat-32 matmuls on recent GPUs keep 10 mantissa bits.
        np.testing.assert_allclose(answer["output"], expected, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
def test_a_tensorflow_service_serves_on_the_gpu(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(textwrap.dedent("""
        import gpuserve

        @gpuserve.service(resources={"gpu": 1}, backend="tensorflow")
        class OnGpu:
            def __init__(self):
                import tensorflow as tf
                self.tf = tf
                self.w = tf.Variable([[2.0], [3.0]])  # built with the worker's GPU current

            @gpuserve.api(batchable=True)
            def apply(self, x: list[list[float]]) -> list[dict]:
                y = self.tf.matmul(self.tf.constant(x), self.w)
                return [{"y": float(v[0]), "device": y.device, "w": self.w.device} for v in y.numpy()]
    """))
    with serve("svc:OnGpu", cwd=tmp_path, env=real_env(), log_dir=tmp_path) as server:
        reply = server.post("apply", {"x": [[1.0, 1.0]]})
    assert reply.status == 200 and reply.body[0]["y"] == pytest.approx(5.0)
    assert reply.body[0]["device"].endswith("GPU:0") and reply.body[0]["w"].endswith("GPU:0")
