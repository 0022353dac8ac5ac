"""Slow and hostile connections against a real server: timeouts, 413 up front, connection limits, backlog."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import time

import pytest

from rawhttp import closed_by_server, connect, head, post, read_answer
from serving import serve

SLOW = 1000  # slow connections held open at once
CLOSE_WITHIN_S = 60  # generous: the server closes them after its timeouts; a busy machine may be late


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """Short timeouts, so that a test sees them at work."""
    args = ("--header-timeout", "2", "--body-timeout", "2", "--keepalive-timeout", "2", "--max-body-size", "4096")
    with serve("hostile:Guarded", *args, log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


def _files_for(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            pytest.skip(f"this test needs {count} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def test_livez_answers_while_a_thousand_slow_connections_are_open_and_then_they_are_closed(tmp_path):
    _files_for(SLOW + 200)
    slow = []
    # Timeouts long enough for every slow connection to be open at once on a slow machine.
    args = ("--header-timeout", "15", "--body-timeout", "15")
    with serve("hostile:Guarded", *args, log_dir=tmp_path) as server:
        _slow_connections_then_closed(server, slow)


def _slow_connections_then_closed(strict, slow):
    try:
        for i in range(SLOW):
            sock = connect(strict.port)
            if i % 2:  # a head that never ends
                sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:  # a body that never comes
                sock.sendall(head("/echo", length=1000) + b'{"value": ')
            slow.append(sock)
        for _ in range(3):
            reply = strict.get("livez", timeout=10)  # a new connection each time
            assert reply.status == 200
        assert strict.post("echo", {"value": "served"}).body == "served"
        # Then each is closed by the server: heads after --header-timeout, bodies after --body-timeout (408).
        deadline = time.monotonic() + CLOSE_WITHIN_S
        answers = []
        for sock in slow:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            answer = read_answer(sock)
            answers.append(answer.status if answer is not None else None)
            assert closed_by_server(sock, within=max(0.1, deadline - time.monotonic()))
        assert answers.count(408) == SLOW // 2 and answers.count(None) == SLOW // 2
    finally:
        for sock in slow:
            sock.close()


def test_a_declared_length_over_the_limit_is_413_before_any_of_it_is_read(strict):
    with connect(strict.port) as sock:
        sock.sendall(head("/echo", length=1_000_000_000) + b"x" * 100)  # 1 GB announced, 100 bytes sent
        answer = read_answer(sock)
    assert answer is not None and answer.status == 413 and b"4096" in answer.body


def test_a_chunked_body_without_its_last_chunk_gets_408(strict):
    with connect(strict.port) as sock:
        sock.sendall(head("/echo", chunked=True) + b"5\r\n{\"val\r\n")
        answer = read_answer(sock)
        assert answer is not None and answer.status == 408 and b"--body-timeout" in answer.body
        assert answer.headers.get("connection") == "close"
        assert closed_by_server(sock, within=CLOSE_WITHIN_S)


def test_a_body_sent_a_byte_at_a_time_gets_408_before_it_is_complete(strict):
    body = b'{"value": "' + b"x" * 200 + b'"}'
    with connect(strict.port) as sock:
        sock.sendall(head("/echo", length=len(body)))
        sock.settimeout(0.3)
        for byte in body:  # 200+ bytes at 0.3 s each: a minute, far past the 2 s timeout
            try:
                sock.sendall(bytes([byte]))
                answer = read_answer(sock)
                break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                pytest.fail("closed without an answer")
        else:
            pytest.fail("the whole body was read")
    assert answer is not None and answer.status == 408


def test_a_head_sent_a_byte_at_a_time_is_closed_without_an_answer(strict):
    start = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with connect(strict.port) as sock:
        closed = False
        for byte in start:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(sock, within=0.3):
                closed = True
                break
        assert closed, "the server kept reading a head for a minute"


def test_an_idle_keepalive_connection_is_closed(strict):
    with connect(strict.port) as sock:
        sock.sendall(post("/echo", b'{"value": 1}'))
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200 and answer.headers.get("connection") != "close"
        assert closed_by_server(sock, within=CLOSE_WITHIN_S)


def test_connections_over_the_limit_get_503_and_close_but_probes_are_answered(tmp_path):
    with serve("hostile:Guarded", "--max-connections", "3", log_dir=tmp_path) as server:
        held = [connect(server.port) for _ in range(3)]
        try:
            for sock in held:  # each is served, and kept open
                sock.sendall(post("/echo", b'{"value": 1}'))
                assert read_answer(sock).status == 200
            with connect(server.port) as extra:
                extra.sendall(post("/echo", b'{"value": 1}'))
                answer = read_answer(extra)
                assert answer.status == 503 and b"too many connections" in answer.body
                assert answer.headers.get("connection") == "close" and "retry-after" in answer.headers
                assert closed_by_server(extra, within=CLOSE_WITHIN_S)
            with connect(server.port) as probe:
                probe.sendall(head("/livez", method="GET"))
                assert read_answer(probe).status == 200
        finally:
            for sock in held:
                sock.close()
        # Once they are gone, new connections are served again.
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while server.post("echo", {"value": 2}).status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read a listening socket's backlog")
def test_the_listen_backlog_is_the_setting(tmp_path):
    with open("/proc/sys/net/core/somaxconn") as f:
        wanted = min(333, int(f.read()))
    with serve("hostile:Guarded", "--backlog", str(wanted), log_dir=tmp_path) as server:
        listing = subprocess.run(["ss", "-Hltn", f"sport = :{server.port}"], capture_output=True, text=True,
                                 check=True).stdout
    # For a listening socket, ss shows the backlog as Send-Q: State Recv-Q Send-Q Local Peer.
    assert listing.split()[2] == str(wanted), listing


def test_the_server_raises_its_open_file_limit_and_keeps_room_below_it(tmp_path):
    with serve("hostile:Guarded", log_dir=tmp_path) as server:
        with open(f"/proc/{server.proc.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        assert soft == hard or hard == "unlimited"
    served = next(line for line in server.log().splitlines() if "at most" in line)
    most = int(served.split("at most ")[1].split()[0])
    assert most < int(soft)


def test_a_next_head_that_begins_while_a_request_runs_is_timed_from_its_first_byte(tmp_path):
    """Pipelined: the next head's first bytes come during a call; once answered, it has --header-timeout
    left to be complete, not the keep-alive timeout."""
    args = ("--header-timeout", "1", "--keepalive-timeout", "60")
    with serve("hostile:Guarded", *args, log_dir=tmp_path) as server, connect(server.port) as sock:
        sock.sendall(post("/hang", b'{"seconds": 0.5}'))
        time.sleep(0.1)
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        answer = read_answer(sock)
        assert answer is not None and answer.status == 200
        assert closed_by_server(sock, within=CLOSE_WITHIN_S / 2)  # far below the keep-alive's 60 s
        # A connection that only waits (no head begun) is still the keep-alive's to close.
        with connect(server.port) as idle:
            idle.sendall(post("/hang", b'{"seconds": 0.5}'))
            assert read_answer(idle).status == 200
            assert not closed_by_server(idle, within=3)


def test_a_head_after_a_refused_request_is_still_timed(tmp_path):
    """The guard that refuses a request (401 here) tells its connection the request is over: a slow head
    sent next on the same connection is closed after --header-timeout, not left to the keep-alive's 60 s."""
    args = ("--api-key", "a-key-0123456789", "--header-timeout", "1", "--keepalive-timeout", "60")
    with serve("hostile:Guarded", *args, log_dir=tmp_path) as server, connect(server.port) as sock:
        sock.sendall(post("/echo", b'{"value": 1}'))  # no key
        answer = read_answer(sock)
        assert answer is not None and answer.status == 401 and answer.headers.get("connection") != "close"
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        assert closed_by_server(sock, within=CLOSE_WITHIN_S / 2)  # far below the keep-alive's 60 s
