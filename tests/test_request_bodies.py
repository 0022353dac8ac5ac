"""Request bodies as clients send them (compressed, in pieces, or only announced), against a real server: read
whole and exactly, and no memory set aside for what a `Content-Length` merely claims."""

from __future__ import annotations

import gzip
import socket
import time

import orjson
import pytest

from rawhttp import Answer, connect, head, read_answer
from serving import serve

MiB = 1024 * 1024
CLAIMED = 48 * MiB  # what each idle connection announces, under the server's limit
IDLE = 8  # connections that announce it and send one byte
RSS_BOUND = 32 * MiB  # growth allowed for them: setting their claims aside would take 384 MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ("--max-body-size", str(64 * MiB), "--body-timeout", "30")
    with serve("hostile:Guarded", *args, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


def _gzipped_echo(port: int, value: str, *, level: int, pieces: int) -> Answer | None:
    packed = gzip.compress(orjson.dumps({"value": value}), compresslevel=level)
    message = head("/echo", length=len(packed), extra="Content-Encoding: gzip\r\n") + packed
    cut = len(message) - len(packed) // 2 if pieces == 2 else len(message)
    with connect(port) as sock:
        sock.sendall(message[:cut])
        if cut < len(message):
            time.sleep(0.2)  # the server has read the first half before the rest comes
            sock.sendall(message[cut:])
        return read_answer(sock)


def test_a_compressed_body_that_arrived_in_one_piece_is_read_whole(server):
    # 1 MB of JSON in a 2 KB gzip: aiohttp inflates it in steps while it is read
    value = "1.0, " * 200_000
    answer = _gzipped_echo(server.port, value, level=9, pieces=1)
    assert answer is not None and answer.status == 200, answer
    assert orjson.loads(answer.body) == value


def test_a_compressed_body_smaller_than_its_content_length_is_read_exactly(server):
    # gzip level 0 stores the bytes: what is inflated is shorter than what was sent
    value = "".join(chr(ord("a") + i % 26) for i in range(100_000))
    answer = _gzipped_echo(server.port, value, level=0, pieces=2)
    assert answer is not None and answer.status == 200, answer
    assert orjson.loads(answer.body) == value


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_a_claimed_length_sets_no_memory_aside_before_the_body_comes(server):
    for _ in range(5):  # warm up: allocator arenas, buffers
        assert server.post("echo", {"value": "x" * 1000}).status == 200
    before = _rss(server.proc.pid)
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            sock = connect(server.port)
            sock.sendall(head("/echo", length=CLAIMED) + b"{")
            idle.append(sock)
        time.sleep(1.0)  # every handler is waiting for the rest of its body
        grown = _rss(server.proc.pid) - before
    finally:
        for sock in idle:
            sock.close()
    assert grown < RSS_BOUND, f"RSS grew by {grown / MiB:.0f} MiB for {IDLE} bodies of one byte"
    assert server.post("echo", {"value": 1}).body == 1


@pytest.mark.parametrize("where", ["loop", "helper"])
def test_a_check_that_raises_is_500_without_retry_after_wherever_the_body_is_decoded(tmp_path, where):
    """A body the decoder fails on fails again: 500, not a 503 that invites the client to send it again."""
    args = ("--off-loop-decode-size", "1") if where == "helper" else ()
    with serve("hostile:BrokenCheck", *args, log_dir=tmp_path) as broken:
        for _ in range(2):  # the helper is still there for the next body
            reply = broken.post("take", {"value": 1})
            assert reply.status == 500 and "retry-after" not in {k.lower() for k in reply.headers}, reply
        if where == "helper":
            assert "decoding failed: RuntimeError: this check is broken" in reply.body["error"]
