"""Servers under test, each a process of its own, with the CPU time it spends."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs

from benchmarks import ROOT

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu(stat_path: str) -> float | None:
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs (e.g. process executors)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Room for every client of the largest concurrency: the default queue of an
# unbatched API (64) would answer most of 256 clients with a fast 503.
QUEUE_SIZE = 1024
# The example MLP computes a 64-row batch in about 100 us on one thread; more
# intra-op threads only spin against the event loop and the load generator for
# the same few cores. Both servers get the same setting; the shell's wins.
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def gpuserve_command(service: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "gpuserve", "serve", service, "--log-level", "warning",
            "--queue-size", str(QUEUE_SIZE), *flags]


def baseline_command() -> list[str]:
    return [sys.executable, "-m", "benchmarks.baseline"]


def server_env(base: Mapping[str, str], threads: bool = True) -> dict[str, str]:
    """`base` without `GPUSERVE_*` (the benchmark, not the shell, sets the server's flags),
    with `THREADS_ENV` where the shell sets nothing (`threads`), or without any of it."""
    env = {k: v for k, v in base.items() if not k.startswith("GPUSERVE_")}
    if not threads:
        return {k: v for k, v in env.items() if k not in THREADS_ENV}
    return {**THREADS_ENV, **env}


@attrs.define
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def cpu_seconds(self) -> tuple[float, float] | None:
        """(whole server, main thread) user + system CPU seconds; None off Linux.

        The whole server is its process and the processes it started (process
        executors). The main thread runs the event loop: its share is the
        front end's cost, the rest is model threads, processes and the like.
        """
        pid = self.proc.pid
        process, loop = _cpu(f"/proc/{pid}/stat"), _cpu(f"/proc/{pid}/task/{pid}/stat")
        if process is None or loop is None:
            return None
        return process + sum(_cpu(f"/proc/{child}/stat") or 0.0 for child in descendants(pid)), loop

    def wait_ready(self, path: str = "/readyz", timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.url + path, timeout=2) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:g} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(name: str, command: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None,
           new_session: bool = False, threads_env: bool = True) -> Server:
    """Start `command --port P` from the repository root; `wait_ready` before use.

    `new_session`: the server leads a process group of its own (the `chaos` scenario signals the group);
    `threads_env` False leaves the frameworks' thread settings to their own defaults.
    """
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port)], cwd=ROOT,
            env=server_env(env if env is not None else os.environ, threads_env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    return Server(name, f"http://127.0.0.1:{port}", proc, log_path)


@contextlib.contextmanager
def running(servers: Sequence[tuple[str, Sequence[str]]], log_dir: Path,
            env: Mapping[str, str] | None = None, *,
            ready_paths: Mapping[str, str] | None = None) -> Iterator[dict[str, Server]]:
    """Start every server at once (their imports overlap), wait for all, stop all at the end.

    A server is ready when its `ready_paths[name]` (default `/readyz`) answers 200.
    """
    started: dict[str, Server] = {}
    try:
        for name, command in servers:
            started[name] = launch(name, command, log_dir, env)
        for name, server in started.items():
            server.wait_ready((ready_paths or {}).get(name, "/readyz"))
        yield started
    finally:
        for server in started.values():
            server.stop()
