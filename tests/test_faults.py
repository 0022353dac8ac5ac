"""Faults the server must see, through a real server and a service that misbehaves on demand
(`apps/faults.py`): a call that never returns, a worker process that exits or is killed, a
constructor that fails, a cold latency model.

No assertion here is on how fast something happens: each waits for what it expects with a
generous deadline. The figures (time to detect, to recover) come from `python -m benchmarks
--scenarios chaos`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import signal

import pytest

from gpuserve.testing.batching_client import journal, one_row, stats, wait_until
from serving import serve

KEY = "cpu:0#0.0"
SERVICES = {"thread": "faults:Faults", "process": "faults:FaultsProcess"}


def serve_faults(directory, *args, service="faults:Faults", **kw):
    return serve(service, *args, env={"BATCH_APPS_DIR": str(directory)}, log_dir=directory, **kw)


def replica(server, key=KEY):
    return server.get("stats").body["replicas"][key]


def metric(server, name, **labels):
    """The value of one series of /metrics."""
    text = server.get("metrics").body
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert found, f"{name}{{{wanted}}} not in /metrics"
    return float(found.group(1))


# -- the watchdog ------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", SERVICES)
def test_a_call_past_its_limit_fails_its_request_and_a_new_replica_serves(tmp_path, isolation):
    with serve_faults(tmp_path, "--call-timeout", "1", service=SERVICES[isolation]) as server:
        before = server.post("whoami", {}).body
        stuck = one_row(server, "predict", "hang", timeout=60)
        assert stuck.status == 504 and stuck.body["reason"] == "call_timeout"
        assert "call limit of 1 s" in stuck.body["error"] and "Retry-After" not in stuck.headers
        # The replica was replaced: the next request is served by a new one.
        after = one_row(server, "predict", "fine", timeout=60)
        assert after.status == 200
        if isolation == "process":
            assert after.body["pid"] != before["pid"]
        assert len(journal(tmp_path, "init")) == 2
        log = server.log()
        assert re.search(r"replica cpu:0#0\.0 is stuck: a call of 'predict' has run for .* past its limit of 1 s", log)
        assert stuck.body["request_id"] in log  # named with its requests
        health = replica(server)
        assert health["state"] == "ready" and health["stuck"] == 1 and health["restarts"] == 1
        assert stats(server, "predict")["outcomes"]["call_timeout"] == 1
        assert metric(server, "gpuserve_replica_stuck_total", replica=KEY) == 1
        if isolation == "thread":
            # The stuck thread cannot be killed: it is left running, and counted while it runs.
            assert health["abandoned_threads"] == 1
            assert metric(server, "gpuserve_replica_abandoned_threads", replica=KEY) == 1
            (tmp_path / "unhang").touch()
            wait_until(lambda: replica(server)["abandoned_threads"] == 0, "the abandoned thread ends", timeout=30)


def test_an_apis_own_call_limit_wins_over_the_servers(tmp_path):
    with serve_faults(tmp_path) as server:  # --call-timeout: none, so --timeout's 60 s; `quick` says 1 s
        stuck = server.post("quick", {"word": "hang"}, timeout=60)
        assert stuck.status == 504 and stuck.body["reason"] == "call_timeout"
        assert server.post("quick", {"word": "fine"}, timeout=60).status == 200


# -- health ----------------------------------------------------------------------------------


def test_readyz_is_503_while_no_replica_can_take_work_and_200_again_once_one_can(tmp_path):
    with serve_faults(tmp_path, "--max-build-failures", "1000", service=SERVICES["process"]) as server:
        ready = server.get("readyz")
        assert ready.status == 200 and ready.body["states"] == {KEY: "ready"}
        pid = server.post("whoami", {}).body["pid"]
        (tmp_path / "fail-init").touch()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: server.get("readyz").status == 503, "/readyz says no replica can take work")
        wait_until(lambda: replica(server)["build_failures"] >= 1, "a rebuild fails")
        down = server.get("readyz")
        assert "no replica can take work" in down.body["error"] and down.body["states"] == {KEY: "restarting"}
        assert int(down.headers["Retry-After"]) >= 1
        health = replica(server)
        assert health["state"] == "restarting" and "fail-init" in health["last_error"]
        assert metric(server, "gpuserve_ready") == 0
        assert metric(server, "gpuserve_replica_state", replica=KEY, state="restarting") == 1
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(one_row, server, "predict", "patient", timeout=60)  # queued meanwhile
            (tmp_path / "fail-init").unlink()
            wait_until(lambda: server.get("readyz").status == 200, "/readyz is 200 again", timeout=60)
            assert waiting.result().status == 200
        assert replica(server)["restarts"] == 1 and replica(server)["build_failures"] == 0
        assert metric(server, "gpuserve_ready") == 1
        assert metric(server, "gpuserve_replica_restarts_total", replica=KEY) == 1


def test_a_replica_that_fails_to_build_again_and_again_fails_the_server_which_exits_non_zero(tmp_path):
    with serve_faults(tmp_path, "--max-build-failures", "2", service=SERVICES["process"]) as server:
        pid = server.post("whoami", {}).body["pid"]
        (tmp_path / "fail-init").touch()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            os.kill(pid, signal.SIGKILL)
            waiting = pool.submit(one_row, server, "predict", "patient", timeout=60)
            code = server.proc.wait(timeout=60)
            answer = waiting.result()
    assert code == 1
    assert answer.status == 503 and answer.body["reason"] == "failed"  # answered, not dropped
    last = server.log().strip().splitlines()[-1]
    assert last == ("gpuserve: replica cpu:0#0.0 failed to build 2 times in a row (--max-build-failures): "
                    "RuntimeError: told to fail: fail-init exists")


def test_a_failed_server_told_not_to_exit_says_why_at_readyz_and_refuses_requests(tmp_path):
    args = ("--max-build-failures", "1", "--no-exit-on-failure")
    with serve_faults(tmp_path, *args, service=SERVICES["process"]) as server:
        pid = server.post("whoami", {}).body["pid"]
        (tmp_path / "fail-init").touch()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: replica(server)["state"] == "failed", "the replica counts as failed")
        down = server.get("readyz")
        assert down.status == 503 and "failed: replica cpu:0#0.0 failed to build 1 times" in down.body["error"]
        refused = one_row(server, "predict", "late", timeout=30)
        assert refused.status == 503 and "failed to build" in refused.body["error"]
        assert server.proc.poll() is None  # still up, for its operator to look at


# -- poison ------------------------------------------------------------------------------------


def test_an_input_that_kills_its_worker_alone_gets_500_twice_then_is_refused_without_running(tmp_path):
    with serve_faults(tmp_path, service=SERVICES["process"]) as server:
        first = one_row(server, "predict", "exit", timeout=60)
        assert first.status == 500 and first.body["reason"] == "crashed" and "Retry-After" not in first.headers
        assert "crashed its replica" in first.body["error"] and "refused from now on" not in first.body["error"]
        second = one_row(server, "predict", "exit", timeout=60)  # a client that retries
        assert second.status == 500 and "refused from now on" in second.body["error"]
        third = one_row(server, "predict", "exit", timeout=60)
        assert third.status == 422 and third.body["reason"] == "quarantined"
        assert [c["items"] for c in journal(tmp_path, "predict")] == [["exit"], ["exit"]]  # two crashes, no more
        assert one_row(server, "predict", "fine", timeout=60).status == 200
        assert replica(server)["restarts"] == 2


def test_native_code_that_crashes_ends_a_thread_server_saying_where_and_costs_a_process_server_one_worker(
        tmp_path):
    threads = tmp_path / "threads"
    threads.mkdir()
    with serve_faults(threads) as server:
        with pytest.raises(OSError):
            server.post("segfault", {}, timeout=30)  # the server is gone with it
        assert server.proc.wait(timeout=30) != 0
        log = server.log()
        assert "Fatal Python error: Segmentation fault" in log and "in segfault" in log
    with serve_faults(tmp_path, service=SERVICES["process"]) as server:
        crashed = server.post("segfault", {}, timeout=60)
        assert crashed.status == 500 and "killed by SIGSEGV" in crashed.body["error"]
        assert "in segfault" in server.log()  # the worker's traceback, in the server's log
        assert one_row(server, "predict", "fine", timeout=60).status == 200


# -- a cold latency model --------------------------------------------------------------------


def test_a_first_burst_after_single_requests_is_never_refused_for_latency(tmp_path):
    # 30 ms a call, whatever its size; max_latency_ms=300. Single requests alone, scaled per
    # row to a batch of 64, would predict about 2 s.
    with serve_faults(tmp_path) as server:
        for i in range(5):
            assert one_row(server, "fixed_cost", f"single-{i}").status == 200
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            burst = list(pool.map(lambda i: one_row(server, "fixed_cost", f"burst-{i}", timeout=60), range(64)))
        statuses = collections.Counter(r.status for r in burst)
        assert statuses == {200: 64}, [r.body for r in burst if r.status != 200][:2]
        assert "latency" not in stats(server, "fixed_cost")["refusals"]
