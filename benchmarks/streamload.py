"""A streaming load generator, in a process of its own: `python -m benchmarks.streamload URL [options]`.

Keeps `--concurrency` keep-alive HTTP/1.1 connections each reading one
Server-Sent Events stream after another (the same POST, `Accept:
text/event-stream`) for `--duration` seconds, and prints JSON: values received
per second (events before each stream's `data: [DONE]`), streams completed,
errors and the time to the first value. Like `loadgen.py` it is a bare asyncio
protocol, not an HTTP library: it finds events by their blank line and a
stream's end by the last chunk of its chunked body, and spends as little CPU
as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from urllib.parse import urlsplit

# Internal on purpose: the same loop type (uvloop when installed) as gpuserve's server, or the
# comparison would measure event loops instead of servers.
from gpuserve.eventloop import new_event_loop

from benchmarks.loadgen import percentile

_LAST_CHUNK = b"\r\n0\r\n\r\n"


class _Tally:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.events = 0  # [DONE] included: subtracted per completed stream
        self.streams = 0
        self.errors = 0
        self.first_value = array("d")  # seconds from sending a request to its first event
        self.connections: list[_Connection] = []


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, tally: _Tally) -> None:
        self.request = request
        self.tally = tally
        self.head = bytearray()  # the answer's head, until it is whole
        self.in_body = False
        self.tail = b""  # the last bytes of the body: events and the last chunk may straddle reads
        self.sent = 0.0
        self.waiting_first = True
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.head.clear()
        self.in_body, self.tail, self.waiting_first = False, b"", True
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if time.perf_counter() >= self.tally.deadline:  # counted until the deadline only
            self._stop()
            return
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if self.head[9:12] != b"200":
                self.tally.errors += 1
                self._stop()
                return
            data = bytes(self.head[end + 4:])
            self.in_body = True
        joined = self.tail + data
        events = joined.count(b"\n\n") - self.tail.count(b"\n\n")
        if events and self.waiting_first:
            self.waiting_first = False
            self.tally.first_value.append(time.perf_counter() - self.sent)
        self.tally.events += events
        if joined.endswith(_LAST_CHUNK):
            self.tally.streams += 1
            self.tally.events -= 1  # its [DONE]
            if time.perf_counter() < self.tally.deadline:
                self._send()
            else:
                self._stop()
            return
        self.tail = joined[-len(_LAST_CHUNK):]

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _drive(url: str, body: bytes, concurrency: int, duration_s: float) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    tally = _Tally(start + duration_s)
    for _ in range(concurrency):
        _, connection = await loop.create_connection(lambda: _Connection(request, tally), host, port)
        tally.connections.append(connection)
    # At the deadline, streams still running are cut: what they sent until then counts.
    cut = loop.call_later(max(0.0, tally.deadline - time.perf_counter()), _stop_all, tally.connections)
    await asyncio.gather(*(c.closed for c in tally.connections))
    cut.cancel()
    elapsed = min(time.perf_counter(), tally.deadline) - start
    first = sorted(tally.first_value)
    return {
        "values": tally.events,
        "duration_s": elapsed,
        "streams": tally.streams,
        "errors": tally.errors,
        "first_value_p50_ms": percentile(first, 50) * 1e3,
        "first_value_p99_ms": percentile(first, 99) * 1e3,
    }


def _stop_all(connections: list[_Connection]) -> None:
    for connection in connections:
        connection._stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streamload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--body", default="{}")
    args = p.parse_args(argv)
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(_drive(args.url, args.body.encode(), args.concurrency, args.duration))
    finally:
        loop.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
