"""A plain install of the core, as a user gets it: no test tools, no simulated hardware, no warnings.

Builds and installs gpuserve from this checkout into a fresh virtual
environment (no pytest, no backends beyond the built-in `cpu`), then runs the
CLI and a server from outside the repository.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from serving import ROOT, free_port, request, server_env

APP = textwrap.dedent('''
    import os
    import gpuserve

    @gpuserve.service(backend="cpu", isolation="process")
    class Hello:
        @gpuserve.api
        def hello(self, name: str):
            return {"hello": name, "pid": os.getpid()}
''')
PLUGIN_TROUBLE = ("failed to load", "plugin", "ModuleNotFoundError", "Traceback")


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A fresh venv with only `pip install <checkout>` in it; its bin folder."""
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
                   check=True, timeout=600, capture_output=True)
    return venv / "bin"


def test_a_plain_install_has_no_test_tools_and_lists_only_real_backends(plain: Path):
    missing = subprocess.run([str(plain / "python"), "-c", "import pytest"], capture_output=True, timeout=60)
    assert missing.returncode != 0
    done = subprocess.run([str(plain / "gpuserve"), "backends", "--json"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT.parent, env=server_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "fake-gpu" not in done.stdout and '"cpu"' in done.stdout


def test_serving_from_a_worker_process_logs_no_plugin_warning(plain: Path, tmp_path: Path):
    (tmp_path / "hello_app.py").write_text(APP)
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(plain / "gpuserve"), "serve", "hello_app:Hello", "--port", str(port)],
                                  cwd=tmp_path, env=server_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if request(f"{url}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        reply = request(f"{url}/hello", {"name": "plain"})
        assert reply.status == 200 and reply.body["hello"] == "plain"
        assert reply.body["pid"] != server.pid  # answered by the worker process
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    assert "ready: 1 replica(s) of Hello" in text
    assert not [word for word in PLUGIN_TROUBLE if word in text], text
