"""Load generators, always in a process of their own: `wrk` when installed, else a Python client.

Both keep `concurrency` HTTP/1.1 keep-alive connections busy with the same POST
for a fixed time and report successful requests per second and latency
percentiles. The Python client (`python -m benchmarks.loadgen`) is a bare
asyncio protocol, not an HTTP library, so it spends as little CPU as it can:
on a 2-core machine every cycle it takes is one the server does not get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs

# Internal on purpose: the same loop type (uvloop when installed) as gpuserve's server, or the
# comparison would measure event loops instead of servers.
from gpuserve.eventloop import new_event_loop

_WRK_MARK = "BENCH_JSON "
_WRK_SCRIPT = """\
wrk.method = "POST"
local file = assert(io.open([==[{body_path}]==], "rb"))
wrk.body = file:read("*a")
file:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{mark}{{\\"requests\\":%d,\\"duration_s\\":%f,\\"status_errors\\":%d,\\"socket_errors\\":%d," ..
    "\\"p50_ms\\":%f,\\"p90_ms\\":%f,\\"p99_ms\\":%f,\\"mean_ms\\":%f}}\\n",
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.mean / 1e3))
end
"""


@attrs.frozen
class Load:
    """One measurement. `rps` counts successful (2xx) answers only."""

    tool: str
    concurrency: int
    duration_s: float
    requests: int
    errors: int  # non-2xx answers and socket errors
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def choose_tool(preference: str = "auto") -> str:
    if preference == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if preference == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("--loadgen wrk: wrk is not installed (apt-get install wrk), or use --loadgen python")
    if preference not in ("wrk", "python"):
        raise ValueError(f"load generator {preference!r} is invalid: expected auto, wrk or python")
    return preference


def tool_version(tool: str) -> str:
    if tool == "python":
        return f"benchmarks.loadgen (Python {sys.version.split()[0]})"
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip()


JSON_HEADERS = {"Content-Type": "application/json"}


def measure(tool: str, url: str, body: bytes, concurrency: int, duration_s: float,
            headers: Mapping[str, str] = JSON_HEADERS) -> Load:
    """Load `url` with POSTs of `body` (any bytes) and `headers` for `duration_s` seconds."""
    run = _wrk if tool == "wrk" else _python
    with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as body_file:
        body_file.write(body)
    try:
        return run(url, body_file.name, headers, concurrency, duration_s)
    finally:
        os.unlink(body_file.name)


def _wrk(url: str, body_path: str, headers: Mapping[str, str], concurrency: int, duration_s: float) -> Load:
    seconds = max(1, round(duration_s))  # wrk takes whole seconds
    lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT.format(body_path=body_path, headers=lines, mark=_WRK_MARK))
    try:
        # One thread: the load generator should not take more than one core.
        done = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", script.name, url],
            capture_output=True, text=True, check=False, timeout=seconds + 60,
        )
    finally:
        os.unlink(script.name)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(_WRK_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(line[len(_WRK_MARK):])
    return _load("wrk", concurrency, raw)


def _python(url: str, body_path: str, headers: Mapping[str, str], concurrency: int, duration_s: float) -> Load:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", url, "--concurrency", str(concurrency),
         "--duration", str(duration_s), "--body-file", body_path,
         *(f"--header={name}: {value}" for name, value in headers.items())],
        capture_output=True, text=True, check=False, timeout=duration_s + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"python load generator failed ({done.returncode}): {done.stderr}")
    return _load("python", concurrency, json.loads(done.stdout))


def _load(tool: str, concurrency: int, raw: dict[str, float]) -> Load:
    ok = raw["requests"] - raw["status_errors"]
    return Load(
        tool=tool,
        concurrency=concurrency,
        duration_s=raw["duration_s"],
        requests=int(raw["requests"]),
        errors=int(raw["status_errors"] + raw["socket_errors"]),
        rps=ok / raw["duration_s"] if raw["duration_s"] else 0.0,
        p50_ms=raw["p50_ms"],
        p90_ms=raw["p90_ms"],
        p99_ms=raw["p99_ms"],
        mean_ms=raw["mean_ms"],
    )


# -- the Python client ---------------------------------------------------------------
class _Tally:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.latencies = array("d")
        self.status_errors = 0
        self.socket_errors = 0
        self.open = 0
        self.finished = asyncio.get_running_loop().create_future()

    def closed(self) -> None:
        self.open -= 1
        if not self.open and not self.finished.done():
            self.finished.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the same request again as each answer completes."""

    def __init__(self, request: bytes, tally: _Tally) -> None:
        self.request = request
        self.tally = tally
        self.buffer = bytearray()
        self.expected: int | None = None  # bytes of the current answer, once its head is in
        self.status = 0
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.expected is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                self.status = int(head[9:12])
                self.expected = end + 4 + _content_length(head)
            if len(self.buffer) < self.expected:
                return
            del self.buffer[:self.expected]
            self.expected = None
            now = time.perf_counter()
            if 200 <= self.status < 300:
                self.tally.latencies.append(now - self.sent)
            else:
                self.tally.status_errors += 1
            if now < self.tally.deadline:
                self._send()
            else:
                assert self.transport is not None
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or self.expected is not None:
            self.tally.socket_errors += 1
        self.tally.closed()


def _content_length(head: bytes) -> int:
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("answer without Content-Length: the client reads only sized bodies")
    start = at + len(b"\r\ncontent-length:")
    stop = head.find(b"\r\n", start)
    return int(head[start:stop if stop >= 0 else len(head)])


async def _drive(url: str, body: bytes, headers: list[str], concurrency: int, duration_s: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{header}\r\n" for header in headers)
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    tally = _Tally(start + duration_s)
    tally.open = concurrency
    for _ in range(concurrency):
        await loop.create_connection(lambda: _Connection(request, tally), host, port)
    await tally.finished
    elapsed = time.perf_counter() - start
    latencies = sorted(tally.latencies)
    return {
        "requests": len(latencies) + tally.status_errors,
        "duration_s": elapsed,
        "status_errors": tally.status_errors,
        "socket_errors": tally.socket_errors,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_ms": (sum(latencies) / len(latencies) * 1e3) if latencies else 0.0,
    }


def percentile(ordered: list[float], q: float) -> float:
    """The `q`th percentile (nearest rank) of sorted figures; 0 for none."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--body-file", required=True, help="the request body, as bytes")
    p.add_argument("--header", action="append", default=[], metavar="NAME: VALUE")
    args = p.parse_args(argv)
    with open(args.body_file, "rb") as f:
        body = f.read()
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(_drive(args.url, body, args.header, args.concurrency, args.duration))
    finally:
        loop.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
