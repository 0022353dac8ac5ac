"""End to end: `python -m gpuserve serve example_app:Linear --backend numpy` and a real HTTP client."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PLUGIN_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


def _example_weights() -> np.ndarray:
    spec = importlib.util.spec_from_file_location("example_app", PLUGIN_DIR / "example_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.weights()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            if _request(f"{base}/readyz", timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"the server was not ready within {START_TIMEOUT_S:g} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        sys.executable, "-m", "gpuserve", "serve", "example_app:Linear",
        "--backend", "numpy", "--port", str(port),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSERVE_")}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=PLUGIN_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, log)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_predict_matches_numpy(server: str) -> None:
    x = [1.0, 2.0, 3.0]
    status, body = _request(f"{server}/predict", {"x": [x]})
    assert status == 200, body
    assert body == (np.asarray([x]) @ _example_weights()).tolist()


def test_concurrent_requests_each_get_their_own_row(server: str) -> None:
    rows = [[float(i), float(i + 1), float(-i)] for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda row: _request(f"{server}/predict", {"x": [row]}), rows))
    expected = (np.asarray(rows) @ _example_weights()).tolist()
    assert answers == [(200, [row]) for row in expected]


def test_plugin_hook_route(server: str) -> None:
    assert _request(f"{server}/plugins/numpy") == (200, {"numpy": np.__version__})


def test_listed_by_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gpuserve", "backends", "--json"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    (row,) = [r for r in json.loads(out) if r["name"] == "numpy"]
    assert row["distribution"] == "gpuserve-numpy"
    assert row["viable"] is True
