"""The `cupy-service` example: refused at once without CUDA, served on the GPU with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuserve.plugin import FAKE_GPUS_ENV, cuda_driver_problem
from gpuserve.testing.served import serve

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "cupy-service"
ROW = [0.1 * i for i in range(1, 17)]
WEIGHTS = np.linspace(-1.0, 1.0, 48, dtype=np.float32).reshape(16, 3)


def real_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GPUSERVE_", "CUDA_")) and k != FAKE_GPUS_ENV}


@pytest.mark.skipif(cuda_driver_problem() is None, reason="a CUDA driver is installed")
def test_without_a_cuda_driver_the_example_is_refused_with_the_reason() -> None:
    done = subprocess.run([sys.executable, "-m", "gpuserve", "serve", "app:CupyService"], cwd=EXAMPLE,
                          env=real_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "backend 'cupy' cannot be used:" in done.stderr
    assert "no CUDA driver" in done.stderr or "cupy is not installed" in done.stderr


@pytest.mark.gpu
def test_the_example_serves_on_the_gpu(tmp_path: Path) -> None:
    with serve("app:CupyService", cwd=EXAMPLE, env=real_env(), log_dir=tmp_path) as server:
        reply = server.post("project", {"x": [ROW]})
    assert reply.status == 200 and reply.body[0]["device"] == "cuda:0"
    want = np.tanh(np.array([ROW], dtype=np.float32) @ WEIGHTS)[0]
    np.testing.assert_allclose(reply.body[0]["output"], want, rtol=1e-4, atol=1e-5)
