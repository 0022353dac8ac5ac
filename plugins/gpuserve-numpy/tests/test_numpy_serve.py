"""End to end: `python -m gpuserve serve example_app:Linear --backend numpy` and a real HTTP client."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gpuserve.testing.served import Server, serve

PLUGIN_DIR = Path(__file__).resolve().parent.parent


def _example_weights() -> np.ndarray:
    spec = importlib.util.spec_from_file_location("example_app", PLUGIN_DIR / "example_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.weights()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example, served by gpuserve's test kit on a free port."""
    with serve("example_app:Linear", "--backend", "numpy", cwd=PLUGIN_DIR,
               log_dir=tmp_path_factory.mktemp("server")) as running:
        yield running


def test_predict_matches_numpy(server: Server) -> None:
    x = [1.0, 2.0, 3.0]
    reply = server.post("predict", {"x": [x]})
    assert reply.status == 200, reply.body
    assert reply.body == (np.asarray([x]) @ _example_weights()).tolist()


def test_concurrent_requests_each_get_their_own_row(server: Server) -> None:
    rows = [[float(i), float(i + 1), float(-i)] for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda row: server.post("predict", {"x": [row]}), rows))
    expected = (np.asarray(rows) @ _example_weights()).tolist()
    assert [(r.status, r.body) for r in replies] == [(200, [row]) for row in expected]


def test_plugin_hook_route(server: Server) -> None:
    reply = server.get("plugins/numpy")
    assert (reply.status, reply.body) == (200, {"numpy": np.__version__})


def test_listed_by_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "backends", "--json"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    (row,) = [r for r in json.loads(out) if r["name"] == "numpy"]
    assert row["distribution"] == "gpuserve-numpy"
    assert row["viable"] is True


def test_the_plugin_route_is_behind_the_api_key_like_gpuserves_own(tmp_path: Path) -> None:
    key = {"Authorization": "Bearer plugin-test-key-0123"}
    with serve("example_app:Linear", "--backend", "numpy", "--api-key", "plugin-test-key-0123", cwd=PLUGIN_DIR,
               log_dir=tmp_path) as keyed:
        assert keyed.get("plugins/numpy").status == 401
        answer = keyed.get("plugins/numpy", headers={**key, "X-Request-ID": "plugin-41"})
        assert answer.status == 200 and answer.headers["X-Request-ID"] == "plugin-41"
        assert keyed.post("predict", {"x": [[1.0, 2.0, 3.0]]}).status == 401
        assert keyed.post("predict", {"x": [[1.0, 2.0, 3.0]]}, headers=key).status == 200
        assert keyed.get("livez").status == 200
