"""`async def` APIs run in the replica, in threads and processes alike, and stop when nobody waits;
what goes wrong is visible in the log, with the request's id."""

from __future__ import annotations

import json
import re
import socket
import time
from urllib.parse import urlsplit

import pytest

from gpuserve.testing.batching_client import wait_until
from serving import serve, server_env

ISOLATIONS = {"thread": "typed:Typed", "process": "typed:TypedProcess"}


@pytest.fixture(scope="module", params=ISOLATIONS, ids=ISOLATIONS.keys())
def served(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"async-{request.param}")
    with serve(ISOLATIONS[request.param], env={"TYPED_APPS_DIR": str(directory)}, log_dir=directory) as server:
        yield server, directory


def events(directory, tag):
    path = directory / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e["event"] for e in map(json.loads, lines) if e["tag"] == tag]


def test_an_async_api_answers_from_the_replica(served):
    server, directory = served
    assert server.post("wait", {"seconds": 0.01, "tag": "quick"}).body == "quick"
    assert events(directory, "quick") == ["start", "finish"]
    assert server.post("double", {"x": [1, 2, 3]}).body == [2, 4, 6]


def test_a_deadline_cancels_the_coroutine_and_frees_the_executor(served):
    server, directory = served
    started = time.monotonic()
    reply = server.post("wait", {"seconds": 600, "tag": "deadline"}, headers={"X-Request-Timeout": "0.5"})
    assert reply.status == 504 and time.monotonic() - started < 10
    wait_until(lambda: events(directory, "deadline") == ["start", "cancelled"], "the coroutine is cancelled")
    assert server.post("wait", {"seconds": 0.01, "tag": "after-deadline"}, timeout=10).body == "after-deadline"


def test_a_client_that_leaves_cancels_the_coroutine(served):
    server, directory = served
    url = urlsplit(server.url)
    body = json.dumps({"seconds": 600, "tag": "left"}).encode()
    with socket.create_connection((url.hostname, url.port)) as conn:
        conn.sendall(f"POST /wait HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: events(directory, "left") == ["start"], "the coroutine runs")
    wait_until(lambda: events(directory, "left") == ["start", "cancelled"], "the coroutine is cancelled")
    assert server.post("wait", {"seconds": 0.01, "tag": "after-leaving"}, timeout=10).body == "after-leaving"


def test_a_failing_call_is_logged_once_with_its_traceback_api_and_request_id(served):
    server, _ = served
    reply = server.post("boom", {"tag": "t-41"}, headers={"X-Request-ID": "client-chosen-41"})
    assert reply.status == 500 and reply.body["type"] == "ValueError"
    assert reply.body["request_id"] == reply.headers["X-Request-ID"] == "client-chosen-41"
    wait_until(lambda: "boom t-41" in server.log(), "the failure is logged")
    log = server.log()
    assert log.count("'boom' failed for request client-chosen-41: ValueError: boom t-41") == 1
    assert "Traceback (most recent call last)" in log and 'raise ValueError(f"boom {tag}")' in log


def test_every_request_has_an_id_and_an_access_log_line(served):
    server, _ = served
    first = server.post("add", {"a": 1, "b": 2})
    second = server.post("add", {"a": 1, "b": 2})
    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert len(set(ids)) == 2 and all(ids)
    for rid in ids:
        wait_until(lambda rid=rid: f"id={rid}" in server.log(), f"an access log line for {rid}")
        [line] = [line for line in server.log().splitlines() if f"id={rid}" in line]
        assert '"POST /add HTTP/1.1" 200' in line
    reply = server.post("add", {"a": "x", "b": 1}, headers={"X-Request-ID": "bad-one"})
    assert reply.status == 400 and reply.body["request_id"] == "bad-one"
    wait_until(lambda: re.search(r'"POST /add HTTP/1.1" 400 .* id=bad-one', server.log()), "the 400 is logged")


def test_every_answer_carries_an_id_the_probes_and_ops_routes_too(served):
    server, _ = served
    for path in ("livez", "readyz", "stats", "openapi.json", "docs", "v2/health/live", "v2/models/add"):
        reply = server.get(path, headers={"X-Request-ID": f"mine-{path}"})
        assert reply.status == 200 and reply.headers["X-Request-ID"] == f"mine-{path}", path
    fresh = server.get("livez").headers["X-Request-ID"]
    assert fresh and not fresh.startswith("mine-")
    wait_until(lambda: f"id={fresh}" in server.log(), "the probe's access log line names its id")


def test_no_access_log_when_asked(tmp_path):
    with serve("typed:Typed", "--no-access-log", env={"TYPED_APPS_DIR": str(tmp_path)}, log_dir=tmp_path) as server:
        rid = server.post("add", {"a": 1, "b": 2}).headers["X-Request-ID"]
        assert server.post("boom", {"tag": "quiet"}).status == 500
        wait_until(lambda: "boom quiet" in server.log(), "the failure is logged")
    assert f"id={rid}" not in server.log() and "POST /add" not in server.log()


@pytest.mark.parametrize("service", ["basics:BrokenInit", "basics:BrokenInitProcess"])
def test_a_constructor_that_fails_logs_its_traceback(tmp_path, service):
    import subprocess
    import sys

    from serving import APPS

    done = subprocess.run([sys.executable, "-m", "gpuserve", "serve", service, "--port", "0"], cwd=APPS,
                          env=server_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert 'raise RuntimeError("weights file missing")' in done.stderr
