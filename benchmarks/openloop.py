"""An open-loop client: requests at a fixed rate whatever the answers, `python -m benchmarks.openloop URL ...`.

Requests fall due every `1 / --rate` seconds and go out on the first free
keep-alive connection of `--connections` (one request at a time on each, as
HTTP/1.1 clients do); when none is free, a request waits in the client. Its
latency runs from when it was due, not from when it went out, so a server
that stalls is charged for every request the stall delays. Each
`--interval` seconds gets its own answers by status, p50, p99 and slowest.
Like `benchmarks.loadgen`, a bare asyncio protocol: little CPU for its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

# Internal on purpose: the same loop type (uvloop when installed) as gpuserve's server.
from gpuserve.eventloop import new_event_loop

from benchmarks.closedloop import answer_in
from benchmarks.loadgen import percentile

TICK_S = 0.001


class _Interval:
    def __init__(self, start: float) -> None:
        self.start = start
        self.latencies: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due: float | None = None  # when the request now on this connection fell due

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.run.free.append(self)
        self.run.dispatch()

    def send(self, due: float) -> None:
        self.due = due
        self.buffer.clear()
        assert self.transport is not None
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = answer_in(self.buffer)
        if answer is None:
            return
        head = answer[0]
        assert self.due is not None
        self.run.answered(self.due, head[9:12].decode())
        self.due = None
        self.run.free.append(self)
        self.run.dispatch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.due is not None:
            self.run.answered(self.due, "reset")
        self.transport = None
        if self in self.run.free:
            self.run.free.remove(self)
        if self.run.sending:
            asyncio.get_running_loop().create_task(self.run.connect())


class _Run:
    def __init__(self, request: bytes, host: str, port: int, rate: float, interval_s: float) -> None:
        self.request = request
        self.host, self.port = host, port
        self.rate = rate
        self.interval_s = interval_s
        self.free: collections.deque[_Connection] = collections.deque()
        self.waiting: collections.deque[float] = collections.deque()  # due times of requests not sent yet
        self.intervals: list[_Interval] = []
        self.start = 0.0
        self.sent = 0
        self.sending = False

    async def connect(self) -> None:
        await asyncio.get_running_loop().create_connection(lambda: _Connection(self), self.host, self.port)

    def tick(self, loop: asyncio.AbstractEventLoop, until: float) -> None:
        now = time.perf_counter()
        due_count = min(int((now - self.start) * self.rate), int((until - self.start) * self.rate))
        while self.sent < due_count:
            self.waiting.append(self.start + self.sent / self.rate)
            self.sent += 1
        self.dispatch()
        if now < until:
            loop.call_later(TICK_S, self.tick, loop, until)
        else:
            self.sending = False

    def dispatch(self) -> None:
        while self.waiting and self.free:
            self.free.popleft().send(self.waiting.popleft())

    def answered(self, due: float, status: str) -> None:
        index = int((due - self.start) // self.interval_s)
        while len(self.intervals) <= index:
            self.intervals.append(_Interval(len(self.intervals) * self.interval_s))
        interval = self.intervals[index]
        interval.statuses[status] += 1
        if status.startswith("2"):
            interval.latencies.append(time.perf_counter() - due)


async def drive(url: str, body: bytes, rate: float, duration_s: float, connections: int,
                interval_s: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    run = _Run(request, host, port, rate, interval_s)
    await asyncio.gather(*(run.connect() for _ in range(connections)))
    loop = asyncio.get_running_loop()
    run.start = time.perf_counter()
    run.sending = True
    run.tick(loop, run.start + duration_s)
    while run.sending:
        await asyncio.sleep(0.1)
    finish_by = time.perf_counter() + 30
    while (run.waiting or len(run.free) < connections) and time.perf_counter() < finish_by:
        await asyncio.sleep(0.05)
    return {
        "rate": rate,
        "duration_s": duration_s,
        "sent": run.sent,
        "unsent": len(run.waiting),
        "intervals": [_summary(i) for i in run.intervals],
    }


def _summary(interval: _Interval) -> dict[str, Any]:
    ordered = sorted(interval.latencies)
    return {
        "start_s": interval.start,
        "answers": dict(interval.statuses),
        "p50_ms": percentile(ordered, 50) * 1e3,
        "p99_ms": percentile(ordered, 99) * 1e3,
        "slowest_ms": (ordered[-1] if ordered else 0.0) * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.openloop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--interval", type=float, default=60.0, help="seconds summarised together")
    p.add_argument("--body", default="{}")
    args = p.parse_args(argv)
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(drive(args.url, args.body.encode(), args.rate, args.duration,
                                               args.connections, args.interval))
    finally:
        loop.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
