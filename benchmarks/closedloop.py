"""Closed-loop clients that account for every request: `python -m benchmarks.closedloop URL ...`.

Each client keeps one keep-alive connection and sends the same POST again as
soon as its answer arrives: at once (`--retry-after ignore`, what a naive
retry loop does) or, after a 503, once the answer's `Retry-After` has passed
(`--retry-after honour`). Every request sent ends in exactly one outcome:

- its status (`200`, `503`, `504`, ...);
- `reset`: the connection failed or closed before the answer came;
- `no_answer`: no answer within `--answer-within` seconds of being sent (the
  connection is then dropped and a new one opened).

The clock starts once every client has connected; after `--duration` no new
request is sent and those on the way get `--answer-within` to be answered.
Like `benchmarks.loadgen`, this is a bare asyncio protocol, not an HTTP
library, so that it costs the shared cores as little as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from array import array
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

# Internal on purpose: the same loop type (uvloop when installed) as gpuserve's server.
from gpuserve.eventloop import new_event_loop

from benchmarks.loadgen import percentile

CONNECT_RETRY_S = 0.1


class _Run:
    """What every client shares: the request, the clock, the counts."""

    def __init__(self, request: bytes, host: str, port: int, honour: bool, answer_within: float) -> None:
        self.request = request
        self.host, self.port = host, port
        self.honour = honour
        self.answer_within = answer_within
        self.sending = False  # true while the measured window is open
        self.outcomes: Counter[str] = Counter()
        self.ok_latencies = array("d")
        self.slowest_answer = 0.0
        self.connect_errors = 0
        self.clients: list[_Client] = []


class _Client(asyncio.Protocol):
    """One closed-loop client: one request at a time on one keep-alive connection."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent: float | None = None  # when the request now waiting for its answer was sent
        self.connected = asyncio.get_running_loop().create_future()

    # -- the connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.connected.done():
            self.connected.set_result(None)
        elif self.run.sending:
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.sent is not None:
            self._outcome("reset")
        if self.run.sending:
            asyncio.get_running_loop().create_task(self.reconnect())

    async def reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        while self.run.sending and self.transport is None:
            try:
                await loop.create_connection(lambda: self, self.run.host, self.run.port)
            except OSError:
                self.run.connect_errors += 1
                await asyncio.sleep(CONNECT_RETRY_S)

    # -- requests and answers ------------------------------------------------------------
    def send(self) -> None:
        if not self.run.sending or self.transport is None or self.sent is not None:
            return
        self.buffer.clear()
        self.sent = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = answer_in(self.buffer)
        if answer is None:
            return
        head, size = answer
        status = int(head[9:12])
        latency = time.perf_counter() - (self.sent or 0.0)
        self.run.slowest_answer = max(self.run.slowest_answer, latency)
        if 200 <= status < 300:
            self.run.ok_latencies.append(latency)
        self._outcome(str(status))
        del self.buffer[:size]
        if header(head, b"connection") == b"close":
            assert self.transport is not None
            self.transport.close()  # the next request goes on a new connection
            return
        wait = _retry_after(head) if status == 503 and self.run.honour else 0.0
        if wait:
            asyncio.get_running_loop().call_later(wait, self.send)
        else:
            self.send()

    def _outcome(self, name: str) -> None:
        self.sent = None
        self.run.outcomes[name] += 1

    def check_answered(self, now: float) -> None:
        """A request that waited longer than allowed has no answer: drop the connection, open another."""
        if self.sent is not None and now - self.sent > self.run.answer_within:
            self._outcome("no_answer")
            if self.transport is not None:
                self.transport.abort()


def answer_in(buffer: bytearray) -> tuple[bytes, int] | None:
    """The first whole answer in `buffer` (keep-alive, `Content-Length`): its head, lower-cased, and its
    size in bytes; None until it has all arrived."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    length = header(head, b"content-length")
    size = end + 4 + int(length) if length is not None else -1
    return (head, size) if 0 <= size <= len(buffer) else None


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a response head (lower-cased), or None."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    stop = head.find(b"\r\n", start)
    return head[start:stop if stop >= 0 else len(head)].strip()


def _retry_after(head: bytes) -> float:
    value = header(head, b"retry-after")
    try:
        return float(value) if value is not None else 0.0
    except ValueError:
        return 0.0


async def _watch(run: _Run) -> None:
    while True:
        await asyncio.sleep(0.5)
        now = time.perf_counter()
        for client in run.clients:
            client.check_answered(now)


async def _connect(run: _Run) -> _Client:
    loop = asyncio.get_running_loop()
    client = _Client(run)
    while True:
        try:
            await loop.create_connection(lambda: client, run.host, run.port)
            return client
        except OSError:
            run.connect_errors += 1
            await asyncio.sleep(CONNECT_RETRY_S)


async def drive(url: str, body: bytes, clients: int, duration_s: float, honour: bool,
                answer_within: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    run = _Run(request, host, port, honour, answer_within)
    connecting = time.perf_counter()
    run.clients = list(await asyncio.gather(*(_connect(run) for _ in range(clients))))
    connect_s = time.perf_counter() - connecting
    watch = asyncio.get_running_loop().create_task(_watch(run))
    run.sending = True
    start = time.perf_counter()
    for client in run.clients:
        client.send()
    await asyncio.sleep(duration_s)
    run.sending = False
    elapsed = time.perf_counter() - start
    finish_by = time.perf_counter() + answer_within + 1.0
    while any(c.sent is not None for c in run.clients) and time.perf_counter() < finish_by:
        await asyncio.sleep(0.1)
    watch.cancel()
    now = math.inf  # whatever is still waiting now has had its chance
    for client in run.clients:
        client.check_answered(now)
        if client.transport is not None:
            client.transport.close()
    ok = sorted(run.ok_latencies)
    return {
        "clients": clients,
        "honour_retry_after": honour,
        "duration_s": elapsed,
        "connect_s": connect_s,
        "outcomes": dict(sorted(run.outcomes.items())),
        "requests": sum(run.outcomes.values()),
        "connect_errors": run.connect_errors,
        "ok_rps": len(ok) / elapsed,
        "ok_p50_ms": percentile(ok, 50) * 1e3,
        "ok_p99_ms": percentile(ok, 99) * 1e3,
        "slowest_answer_ms": run.slowest_answer * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.closedloop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--body", default="{}")
    p.add_argument("--retry-after", choices=["ignore", "honour"], default="ignore")
    p.add_argument("--answer-within", type=float, default=30.0,
                   help="seconds after which a request without an answer counts as unanswered")
    args = p.parse_args(argv)
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(drive(args.url, args.body.encode(), args.clients, args.duration,
                                               args.retry_after == "honour", args.answer_within))
    finally:
        loop.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
