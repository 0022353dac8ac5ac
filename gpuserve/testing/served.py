"""Start a real `python -m gpuserve serve` on a free port and talk to it over HTTP.

    with serve("app:Classifier", "--workers", "2", cwd=app_dir, log_dir=tmp_path) as server:
        assert server.post("predict", {"x": [...]}).status == 200

The server runs as a child process with the caller's environment less its
`GPUSERVE_*` variables (plus `env`); its output goes to a log file whose text
an error shows when it does not start.
"""

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
def serve(ref: str, *args: str, cwd: Path | str = ".", env: Mapping[str, str] | None = None,
          log_dir: Path, wait_ready: bool = True, timeout: float = 90,
          python: str = sys.executable, port_from_env: bool = False, new_session: bool = False,
          tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    """`python -m gpuserve serve REF` on a free port.

    `python`: another environment's interpreter; `port_from_env`: the port in
    `GPUSERVE_PORT` rather than a flag, as a container image passes it;
    `new_session`: the server leads a process group of its own (for signals to the whole group);
    `tls`: the server serves HTTPS (its certificate among `args`), and requests trust what `tls` trusts.
    """
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    flags = ["--port", str(port)]
    if port_from_env:
        env, flags = {**(env or {}), "GPUSERVE_PORT": str(port)}, []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [python, "-m", "gpuserve", "serve", ref, *flags, *args],
            cwd=cwd, env=server_env(env), stdout=log, stderr=subprocess.STDOUT, text=True,
            start_new_session=new_session,
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
