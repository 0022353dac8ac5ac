"""Shutdown is graceful and bounded: a replica stuck in user code cannot hold the server up."""

import signal
import threading
import time

import pytest

from serving import serve, wait_until_running


@pytest.mark.parametrize("service", ["basics:Stuck", "basics:StuckProcess"])
def test_sigterm_exits_in_bounded_time_with_a_replica_stuck_in_user_code(tmp_path, service):
    with serve(service, "--drain-timeout", "1", log_dir=tmp_path) as server:
        stuck = threading.Thread(target=post_ignoring_errors, args=(server, "forever"), daemon=True)
        stuck.start()
        wait_until_running(server, "forever")
        assert server.post("ping", {}, headers={"X-Request-Timeout": "0.5"}).status == 504
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=40)
        took = time.monotonic() - started
    assert took < 30, f"shutdown took {took:.1f} s"
    assert code == 0


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


def post_ignoring_errors(server, api):
    try:
        server.post(api, {}, timeout=60)
    except OSError:  # the server goes away under this request: that is the test
        pass
