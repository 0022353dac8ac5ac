"""Scenario `chaos`: each fault applied to a fresh server under load, and what it cost.

The load: `CLIENTS` keep-alive connections, each sending the next request as
soon as the last is answered (a connection told `Connection: close`, or
closed, is opened again). Every request is recorded: when it was sent, when
and how it was answered, or that it never was (**lost**: its connection
closed, or the run ended, without an answer). A connection that cannot be
opened (the server stopped listening) is counted apart: nothing was sent.
`/readyz` is asked every `READYZ_EVERY_S` throughout.

Per fault the row says: requests by answer, lost, whether and when the fault
was detected (its own request's answer, the replica's state, or the
process's exit), when service recovered (the start of the first one-second
window whose successful answers reach 0.9x the rate before the fault), and
what `/readyz` answered during it. One fault loses requests by its nature:
a server killed with SIGKILL answers nothing it had accepted; its row is there
for how long its worker process outlives it. The service is `benchmarks.apps:Chaos`, a
2 ms call whatever its batch, so batching matters as it does on a GPU.

Unlike the rest of `benchmarks/`, this scenario reads the servers' logs and
`/stats` to tell what happened; it uses no internal module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from benchmarks.apps import CHAOS_DIR_ENV
from benchmarks.closedloop import answer_in
from benchmarks.config import RunConfig
from benchmarks.servers import Server, descendants, gpuserve_command, launch

CLIENTS = 64
READYZ_EVERY_S = 0.05
RECOVERED_AT = 0.9  # of the rate before the fault
WINDOW_S = 1.0
GIVE_UP_S = 60.0  # a request unanswered this long counts as lost
BODY = b'{"x": ["ok"]}'
CALL_TIMEOUT_S = 2.0  # the stuck-call faults' --call-timeout
DRAIN_S = 5.0  # the stop faults' --drain-timeout


@attrs.frozen
class Fault:
    name: str
    what: str
    flags: tuple[str, ...]
    apply: Callable[[Run], Awaitable[dict[str, Any]]]  # injects it; returns what it observed
    ends_server: bool = False  # the server exits because of it


def chosen(config: RunConfig) -> list[Fault]:
    return [f for f in FAULTS if config.faults is None or f.name in config.faults]


def steps(config: RunConfig) -> int:
    return len(chosen(config))


def run(config: RunConfig, log_dir: Path, progress: Callable[[int], None]) -> list[dict[str, Any]]:
    before_s, after_s = (1.5, 6.0) if config.quick else (3.0, 12.0)
    rows = []
    for fault in chosen(config):
        rows.append(asyncio.run(_one(fault, before_s, after_s, log_dir)))
        progress(1)
    return rows


# -- one fault ---------------------------------------------------------------------------------


@attrs.define
class Run:
    """A server under load: what a fault needs to act on it, and the record of what happened."""

    server: Server
    directory: Path  # $CHAOS_DIR
    load: Load
    started: float  # time.monotonic() at the fault
    notes: dict[str, Any] = attrs.Factory(dict)

    @property
    def url(self) -> str:
        return self.server.url

    def workers(self) -> list[int]:
        return descendants(self.server.proc.pid)


async def _one(fault: Fault, before_s: float, after_s: float, log_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gpuserve-chaos-") as directory:
        server = launch(f"chaos-{fault.name}", gpuserve_command("benchmarks.apps:Chaos", *fault.flags), log_dir,
                        env={**os.environ, CHAOS_DIR_ENV: directory}, new_session=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, server.wait_ready)
            load = Load(server.url, CLIENTS)
            readyz = Readyz(server.url)
            await load.start()
            readyz.start()
            await asyncio.sleep(before_s)
            run = Run(server, Path(directory), load, time.monotonic())
            observed = await fault.apply(run)
            await _settle(run, after_s, fault.ends_server)
            await load.stop()
            await readyz.stop()
            return _row(fault, run, observed, readyz, before_s)
        finally:
            server.stop()


async def _settle(run: Run, after_s: float, ends_server: bool) -> None:
    """Keep the load on for `after_s` after the fault, or until the server exits (then a moment more)."""
    end = run.started + after_s
    while time.monotonic() < end and run.server.proc.poll() is None:
        await asyncio.sleep(0.05)
    if run.server.proc.poll() is not None and "exit_s" not in run.notes:
        run.notes["exit_s"] = time.monotonic() - run.started
        run.notes["exit_code"] = run.server.proc.returncode


def _row(fault: Fault, run: Run, observed: dict[str, Any], readyz: Readyz, before_s: float) -> dict[str, Any]:
    load, t0 = run.load, run.started
    answered = Counter(str(s) for s in load.status if s)
    rate_before = load.ok_between(t0 - before_s, t0) / before_s
    recovery = load.recovered_after(t0, rate_before * RECOVERED_AT)
    polled = [(t - t0, status) for t, status in readyz.seen if t >= t0]
    unready = [t for t, status in polled if status != 200]
    row = {
        "fault": fault.name,
        "what": fault.what,
        "flags": list(fault.flags),
        "clients": CLIENTS,
        "requests": len(load.status),
        "answered": dict(sorted(answered.items())),
        "lost": sum(1 for s in load.status if not s),
        "not_connected": load.refused,
        "rps_before": rate_before,
        "recovery_s": recovery,
        "readyz": dict(sorted(Counter(str(status) for _, status in polled).items())),
        "readyz_not_200_from_s": min(unready, default=None),
        "readyz_200_again_s": next((t for t, status in polled if unready and t > unready[-1] and status == 200),
                                   None),
        **observed,
        **run.notes,
    }
    row["detected"] = row.get("detected_s") is not None
    return row


# -- the faults ----------------------------------------------------------------------------------


async def _stuck_call(run: Run) -> dict[str, Any]:
    status, body = await post(run.url, b'{"x": ["hang"]}', timeout=GIVE_UP_S)
    detected = time.monotonic() - run.started if status == 504 else None
    return {"fault_answer": status, "fault_reason": _reason(body), "detected_s": detected}


async def _worker_killed(run: Run) -> dict[str, Any]:
    for worker in run.workers():
        os.kill(worker, signal.SIGKILL)
    return {"detected_s": await _until(lambda: _replica_stat(run, "restarts") >= 1, run)}


async def _poison(run: Run) -> dict[str, Any]:
    """5 inputs that each kill the worker, each from a client that retries a 5xx answer 3 times."""

    async def client(n: int) -> list[int | None]:
        statuses: list[int | None] = []
        for _ in range(4):
            status, _ = await post(run.url, b'{"x": ["exit-%d"]}' % n, timeout=GIVE_UP_S)
            statuses.append(status)
            if status is not None and status < 500:
                break
        return statuses

    answers = await asyncio.gather(*(client(n) for n in range(5)))
    detected = time.monotonic() - run.started if all(statuses[0] == 500 for statuses in answers) else None
    await _until(lambda: _ready(run), run)  # the last crash's replica is rebuilt
    crashes = run.server.log_path.read_text().count(" died (")  # each lost worker is logged once
    return {"poisoned_answers": answers, "crashes": crashes, "detected_s": detected}


async def _oom_item(run: Run) -> dict[str, Any]:
    status, body = await post(run.url, b'{"x": ["oom"]}', timeout=GIVE_UP_S)
    return {"fault_answer": status, "fault_type": (body or {}).get("type"),
            "detected_s": time.monotonic() - run.started if status == 500 else None}


async def _unbuildable(run: Run) -> dict[str, Any]:
    (run.directory / "fail-init").touch()
    for worker in run.workers():
        os.kill(worker, signal.SIGKILL)
    code = await asyncio.get_running_loop().run_in_executor(None, run.server.proc.wait, GIVE_UP_S)
    run.notes.update(exit_s=time.monotonic() - run.started, exit_code=code)
    return {"detected_s": run.notes["exit_s"], "last_line": _last_line(run.server)}


async def _shutdown_stuck(run: Run) -> dict[str, Any]:
    """SIGTERM while one of two replicas is stuck in a call: the stop must still keep its budget."""
    stuck = asyncio.ensure_future(post(run.url, b'{"x": ["hang"]}', timeout=GIVE_UP_S))
    await asyncio.sleep(0.5)  # taken into a batch by then, on one of the two replicas
    return await _stop(run, lambda: run.server.proc.send_signal(signal.SIGTERM), stuck)


async def _group_ctrl_c(run: Run) -> dict[str, Any]:
    """Ctrl-C as a terminal sends it: SIGINT to the server's whole process group, worker processes included."""
    return await _stop(run, lambda: os.killpg(run.server.proc.pid, signal.SIGINT))


async def _stop(run: Run, send: Callable[[], None], stuck: asyncio.Future[Any] | None = None) -> dict[str, Any]:
    run.started = time.monotonic()  # from the signal
    send()
    code = await asyncio.get_running_loop().run_in_executor(None, run.server.proc.wait, GIVE_UP_S)
    run.notes.update(exit_s=time.monotonic() - run.started, exit_code=code)
    log = run.server.log_path.read_text()
    observed: dict[str, Any] = {"detected_s": run.notes["exit_s"], "budget_s": DRAIN_S,
                                "workers_rebuilt": log.count("rebuilt and serving again")}
    if stuck is not None:
        status, body = await stuck
        observed.update(stuck_answer=status, stuck_reason=_reason(body))
    return observed


async def _server_killed(run: Run) -> dict[str, Any]:
    """SIGKILL the server while its worker runs a batch: how long does the worker outlive it?"""
    workers = run.workers()
    run.server.proc.kill()
    gone = await _until(lambda: not any(_alive(pid) for pid in workers), run)
    run.notes.update(exit_code=run.server.proc.wait())
    return {"workers": len(workers), "workers_gone_s": gone, "detected_s": gone}


FAULTS = (
    Fault("stuck_call", "one call never returns (threads)", ("--call-timeout", str(CALL_TIMEOUT_S)), _stuck_call),
    Fault("stuck_call_process", "one call never returns (processes)",
          ("--isolation", "process", "--call-timeout", str(CALL_TIMEOUT_S)), _stuck_call),
    Fault("worker_killed", "the worker process is SIGKILLed", ("--isolation", "process"), _worker_killed),
    Fault("poison", "5 inputs kill the worker; each client retries 3 times", ("--isolation", "process"), _poison),
    Fault("oom_item", "one request runs out of memory, even alone", (), _oom_item),
    Fault("unbuildable", "the worker is SIGKILLed and its constructor fails from then on",
          ("--isolation", "process", "--max-build-failures", "3"), _unbuildable, ends_server=True),
    Fault("shutdown_stuck", "SIGTERM while one of two replicas is stuck",
          ("--cpu-devices", "2", "--workers", "2", "--drain-timeout", str(DRAIN_S), "--call-timeout", "60"),
          _shutdown_stuck, ends_server=True),
    Fault("group_ctrl_c", "SIGINT to the whole process group", ("--isolation", "process", "--drain-timeout",
                                                                 str(DRAIN_S)), _group_ctrl_c, ends_server=True),
    Fault("server_killed", "the server is SIGKILLed while its worker is busy", ("--isolation", "process"),
          _server_killed, ends_server=True),
)

NAMES = tuple(f.name for f in FAULTS)


# -- helpers --------------------------------------------------------------------------------------


async def _until(predicate: Callable[[], bool], run: Run, timeout: float = GIVE_UP_S) -> float | None:
    """Seconds from the fault until `predicate()` holds (checked every 20 ms); None if it never does."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await loop.run_in_executor(None, predicate):
            return time.monotonic() - run.started
        await asyncio.sleep(0.02)
    return None


def _stats(run: Run) -> dict[str, Any]:
    with urllib.request.urlopen(run.url + "/stats", timeout=10) as answer:
        return json.loads(answer.read())


def _ready(run: Run) -> bool:
    try:
        with urllib.request.urlopen(run.url + "/readyz", timeout=10) as answer:
            return answer.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def _replica_stat(run: Run, key: str) -> int:
    try:
        return sum(r[key] for r in _stats(run)["replicas"].values())
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _last_line(server: Server) -> str:
    lines = server.log_path.read_text().strip().splitlines()
    return lines[-1] if lines else ""


def _reason(body: dict[str, Any] | None) -> str | None:
    return (body or {}).get("reason")


async def post(url: str, body: bytes, timeout: float) -> tuple[int | None, dict[str, Any] | None]:
    """One POST /predict on a connection of its own; (status, JSON body), or (None, None) without an answer."""
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None, None
    try:
        writer.write(_request(parts.hostname, parts.port, "POST", "/predict", body, close=True))
        raw = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError):
        return None, None
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        return None, None
    try:
        return int(head[9:12]), json.loads(payload)
    except ValueError:
        return int(head[9:12]), None


def _request(host: str | None, port: int | None, method: str, path: str, body: bytes = b"",
             close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode() + body


# -- the load and the readiness probe ---------------------------------------------------------


class Load:
    """`clients` keep-alive connections, each with one request in flight; every request recorded."""

    def __init__(self, url: str, clients: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = _request(self.host, self.port, "POST", "/predict", BODY)
        self.clients = clients
        self.sent = array("d")  # per request: when it was sent,
        self.done = array("d")  # when it was answered or given up,
        self.status = array("i")  # and its status (0: lost)
        self.refused = 0  # connections that could not be opened
        self.stopping = False
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for _ in range(self.clients):
            self.reconnect()

    def reconnect(self) -> None:
        if not self.stopping:
            task = asyncio.get_running_loop().create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                await loop.create_connection(lambda: _Connection(self), self.host, self.port)
                return
            except OSError:
                self.refused += 1
                await asyncio.sleep(0.05)

    def record(self, sent: float, status: int) -> None:
        self.sent.append(sent)
        self.done.append(time.monotonic())
        self.status.append(status)

    async def stop(self) -> None:
        """Send nothing more; wait for the requests in flight (up to `GIVE_UP_S`), then count the rest lost."""
        self.stopping = True
        end = time.monotonic() + GIVE_UP_S
        while any(c.sent is not None for c in self._connections) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for connection in list(self._connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()

    def ok_between(self, start: float, end: float) -> int:
        return sum(1 for done, status in zip(self.done, self.status) if status == 200 and start <= done < end)

    def recovered_after(self, t0: float, rate: float) -> float | None:
        """Seconds from `t0` to the start of the first window of `WINDOW_S` with `rate` answers/s or more."""
        if rate <= 0:
            return None
        done = sorted(d for d, s in zip(self.done, self.status) if s == 200 and d >= t0)
        last = 0
        for first, start in enumerate(done):  # windows starting at each answer
            while last < len(done) and done[last] < start + WINDOW_S:
                last += 1
            if last == len(done):  # the window runs past the measurement
                return None
            if (last - first) / WINDOW_S >= rate:
                return start - t0
        return None


class _Connection(asyncio.Protocol):
    def __init__(self, load: Load) -> None:
        self.load = load
        self.buffer = bytearray()
        self.sent: float | None = None  # the request in flight
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.load._connections.add(self)
        self._send()

    def _send(self) -> None:
        if self.load.stopping:
            self.close()
            return
        self.sent = time.monotonic()
        assert self.transport is not None
        self.transport.write(self.load.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = answer_in(self.buffer)
        if answer is None:
            return
        head, size = answer
        del self.buffer[:size]
        assert self.sent is not None
        self.load.record(self.sent, int(head[9:12]))
        self.sent = None
        if b"\r\nconnection: close" in head:
            self.close()
        else:
            self._send()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.load._connections.discard(self)
        if self.sent is not None:  # sent, never answered
            self.load.record(self.sent, 0)
            self.sent = None
        self.load.reconnect()


class Readyz:
    """`GET /readyz` every `READYZ_EVERY_S`: (time, status or None when nothing answered)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, int | None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        parts = urlsplit(self.url)
        while True:
            status = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 2)
                writer.write(_request(parts.hostname, parts.port, "GET", "/readyz", close=True))
                head = await asyncio.wait_for(reader.read(), 2)
                writer.close()
                status = int(head[9:12]) if head.startswith(b"HTTP/1.1 ") else None
            except (OSError, asyncio.TimeoutError, ValueError):
                pass
            self.seen.append((time.monotonic(), status))
            await asyncio.sleep(READYZ_EVERY_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
