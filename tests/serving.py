"""Start a real `python -m gpuserve serve` on a free port and talk to it over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.frozen
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


def request(url: str, body: bytes | dict | None = None, *, method: str | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 30,
            tls: ssl.SSLContext | None = None) -> Reply:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    # urllib calls any body a form unless told: JSON routes refuse forms (415).
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls) as r:
            status, raw, hdrs = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), dict(e.headers)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(status, parsed, hdrs)


@attrs.define
class Server:
    url: str
    proc: subprocess.Popen[str]
    log_path: Path
    tls: ssl.SSLContext | None = None  # the client side of an HTTPS server

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text()

    def post(self, api: str, body: bytes | dict, **kw: Any) -> Reply:
        return request(f"{self.url}/{api.lstrip('/')}", body, tls=self.tls, **kw)

    def get(self, path: str, **kw: Any) -> Reply:
        return request(f"{self.url}/{path.lstrip('/')}", tls=self.tls, **kw)


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSERVE_")}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def serve(ref: str, *args: str, cwd: Path = APPS, env: Mapping[str, str] | None = None,
          log_dir: Path, wait_ready: bool = True, timeout: float = 90,
          tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """`tls`: the server serves HTTPS (its certificate among `args`); requests trust what `tls` trusts."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuserve", "serve", ref, "--port", str(port), *args],
            cwd=cwd, env=server_env(env), stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    server = Server(f"{'https' if tls else 'http'}://127.0.0.1:{port}", proc, log_path, tls)
    try:
        _wait(server, "/readyz" if wait_ready else "/livez", timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        with contextlib.suppress(OSError):
            if server.get(path, timeout=2).status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"server not answering {path} after {timeout}s:\n{server.log()}")


def wait_until_running(server: Server, api: str, timeout: float = 30) -> None:
    """Wait until `api` has an item running on some executor (per /stats)."""
    deadline = time.monotonic() + timeout
    while not any(server.get("stats").body[api]["in_flight"].values()):
        assert time.monotonic() < deadline, f"{api} never started"
        time.sleep(0.02)
