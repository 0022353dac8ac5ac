"""Start and stop: one budget (--drain-timeout) bounds the whole stop; a failed start says why in one line."""

import concurrent.futures
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from serving import APPS, serve, server_env, wait_until_running

DRAIN_S = 2.0
# The process's own exit after the stop: interpreter teardown, a killed child reaped.
EXIT_MARGIN_S = 1.5


@pytest.mark.parametrize("service", ["basics:Stuck", "basics:StuckProcess"])
def test_sigterm_stops_within_the_drain_timeout_and_answers_every_accepted_request(tmp_path, service):
    with serve(service, "--drain-timeout", str(DRAIN_S), log_dir=tmp_path) as server:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stuck = pool.submit(server.post, "forever", {}, timeout=60)
            wait_until_running(server, "forever")
            queued = pool.submit(server.post, "ping", {}, timeout=60)  # waits behind the stuck call
            time.sleep(0.2)
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(timeout=60)
            took = time.monotonic() - started
            answers = [stuck.result(), queued.result()]
    assert code == 0
    assert took < DRAIN_S + EXIT_MARGIN_S, f"the stop took {took:.1f} s with --drain-timeout {DRAIN_S:g}"
    # Neither was dropped: both were answered, as shut down, before the process ended.
    assert [a.status for a in answers] == [503, 503], [a.body for a in answers]
    assert {a.body["reason"] for a in answers} == {"shutting_down"}


def test_sigterm_lets_a_running_request_finish(tmp_path):
    with serve("basics:Basics", log_dir=tmp_path) as server:
        replies = []
        worker = threading.Thread(target=lambda: replies.append(server.post("slow", {"seconds": 1})))
        worker.start()
        wait_until_running(server, "slow")
        server.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=30)
        assert server.proc.wait(timeout=30) == 0
    assert replies and replies[0].status == 200 and replies[0].body == 1


def serve_once(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuserve", "serve", *args], cwd=APPS, env=server_env(),
                          capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_port_in_use_is_one_line_naming_the_port_and_a_non_zero_exit():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_once("basics:Basics", "--port", str(port))
    assert done.returncode == 1
    assert last_line(done.stderr) == (
        f"gpuserve: cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with --port)"
    )
    assert "Traceback" not in done.stderr + done.stdout


def test_a_replica_that_cannot_be_built_ends_the_start_with_one_line_and_a_non_zero_exit():
    done = serve_once("basics:BrokenInit", "--port", "0")
    assert done.returncode == 1
    assert last_line(done.stderr).startswith("gpuserve: replicas failed to build: replica cpu:0#0.0 failed to build")
    assert "RuntimeError: weights file missing" in last_line(done.stderr)
