"""What every kind of executor keeps, as a pytest class to subclass: one suite for threads, processes, Ray.

    from gpuserve.testing import ExecutorConformance

    class TestMyExecutors(ExecutorConformance):
        replicas_are_processes = True       # a lost process can be killed, and is replaced

        @pytest.fixture(scope="class")
        @classmethod
        def executor_args(cls):            # the `serve` flags that choose the kind
            return ("--executors", "mykind")

A real server (`python -m gpuserve serve`) runs `gpuserve.testing.batching_app`
with one replica of the kind, and the suite talks to it over HTTP:
backpressure, deadlines, cancellation of queued work, per-item failure
isolation (a batch that fails as a whole runs each request again alone, once),
out-of-memory ceilings and `/stats` behave as they do with local threads; and
where replicas are processes, one that is killed is replaced and its batch runs
again on the new one, an input that makes its replica exit is named (500) and
then refused without running (422), and nothing queued is lost.

The app journals every call to `$BATCH_APPS_DIR/journal.jsonl`; the
`workdir` fixture is that folder, set for the server. A kind whose replicas
do not inherit the server's environment (Ray actors take their node's)
overrides `workdir` with the folder its replicas are given.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from gpuserve.testing.batching_client import (
    held,
    journal,
    one_row,
    post_all,
    post_and_leave,
    queued,
    running,
    seen,
    stats,
    timed_post,
    wait_until,
)
from gpuserve.testing.served import Server, serve

APP = "gpuserve.testing.batching_app:Batching"
APIS = {"hold", "stall", "whoami", "opaque", "work", "squeeze", "swallow", "timed", "warms_up", "die"}
QUEUE = 16


class ExecutorConformance:
    replicas_are_processes: ClassVar[bool] = False  # True: a replica is a process of this machine that can be killed

    # -- fixtures (override `executor_args`, and `workdir` or `server_env` where needed) --------
    @pytest.fixture(scope="class")
    @classmethod
    def executor_args(cls) -> tuple[str, ...]:
        raise NotImplementedError("override the executor_args fixture: the serve flags that choose the kind")

    @pytest.fixture(scope="class")
    @classmethod
    def workdir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("executor-conformance")

    @pytest.fixture(scope="class")
    @classmethod
    def server_env(cls) -> dict[str, str]:
        return {}

    @pytest.fixture(scope="class")
    @classmethod
    def server(cls, executor_args: tuple[str, ...], workdir: Path, server_env: dict[str, str],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
        env = {"BATCH_APPS_DIR": str(workdir), **server_env}
        logs = tmp_path_factory.mktemp("executor-conformance-logs")
        with serve(APP, *executor_args, "--queue-size", str(QUEUE), env=env, log_dir=logs) as s:
            yield s

    @pytest.fixture(scope="class")
    @classmethod
    def key(cls, server: Server) -> str:
        """The one executor's key, as `/stats` names it."""
        assert server.post("whoami", {}).status == 200
        [key] = stats(server, "whoami")["in_flight"]
        return key

    @pytest.fixture
    def process(self) -> None:
        if not self.replicas_are_processes:
            pytest.skip("replicas of this kind are not processes that can be killed")

    # -- the kind ----------------------------------------------------------------------------
    def test_serves_one_replica_whose_context_is_bound(self, server: Server, key: str) -> None:
        assert server.get("readyz").body == {"status": "ready", "replicas": 1, "states": {key: "ready"}}
        me = server.post("whoami", {}).body
        assert (me["worker"], me["instance"]) == (0, 0)
        assert (me["pid"] != server.proc.pid) is self.replicas_are_processes
        assert set(server.get("stats").body) == APIS | {"replicas"}

    # -- backpressure --------------------------------------------------------------------------
    def test_a_full_queue_answers_503_with_retry_after_at_once(self, server: Server, workdir: Path) -> None:
        with held(server, workdir) as gate:
            waiting = post_all(server, "work", [f"full-{i}" for i in range(QUEUE)])
            queued(server, "work", QUEUE)
            before = stats(server, "work")["refusals"].get("queue_full", 0)
            reply, took = timed_post(server, "work", "full-extra")
            assert reply.status == 503 and took < 0.5
            assert reply.body["reason"] == "queue_full" and f"{QUEUE} waiting" in reply.body["error"]
            assert int(reply.headers["Retry-After"]) >= 1
            gate.open()
            assert [f.result(timeout=30).status for f in waiting] == [200] * QUEUE
        assert stats(server, "work")["refusals"]["queue_full"] == before + 1
        assert "full-extra" not in seen(workdir, "work", "full-")

    # -- deadlines and cancellation ------------------------------------------------------------
    def test_request_timeout_header_gives_504_on_time_while_the_executor_is_stuck(
        self, server: Server, workdir: Path
    ) -> None:
        before = stats(server, "work")["refusals"].get("deadline", 0)
        with held(server, workdir):
            reply, took = timed_post(server, "work", "deadline-1", headers={"X-Request-Timeout": "0.3"})
            assert reply.status == 504 and 0.3 <= took < 1.5
            assert reply.body["reason"] == "deadline" and "0.3 s" in reply.body["error"]
            assert "Retry-After" not in reply.headers
        assert one_row(server, "work", "deadline-after").status == 200
        assert seen(workdir, "work", "deadline-") == {"deadline-after"}  # the expired one never ran
        assert stats(server, "work")["refusals"]["deadline"] == before + 1

    def test_a_disconnected_clients_request_never_reaches_the_model(self, server: Server, workdir: Path) -> None:
        before = stats(server, "work")["refusals"].get("cancelled", 0)
        with held(server, workdir):
            post_and_leave(server, "work", {"item": ["gone-1"]}, queued=lambda: stats(server, "work")["queue_depth"] == 1)
            # The server notices the hang-up while the item still waits for the executor.
            wait_until(lambda: stats(server, "work")["refusals"].get("cancelled", 0) == before + 1,
                       "the server counts the request as cancelled")
            assert stats(server, "work")["queue_depth"] == 0
        assert one_row(server, "work", "gone-after").status == 200
        assert seen(workdir, "work", "gone-") == {"gone-after"}

    # -- failures ------------------------------------------------------------------------------
    def test_a_poisoned_item_fails_alone_and_the_rest_of_its_batch_succeeds(self, server: Server, workdir: Path) -> None:
        items = [f"mixed-{i}" for i in range(7)] + ["poison-mixed"]
        with held(server, workdir) as gate:
            replies = post_all(server, "work", items)
            queued(server, "work", 8)
            gate.open()
            answered = dict(zip(items, (f.result(timeout=30) for f in replies)))
        poisoned = answered.pop("poison-mixed")
        assert poisoned.status == 500 and poisoned.body["type"] == "ValueError"
        assert "poison-mixed" in poisoned.body["error"]
        assert {r.status for r in answered.values()} == {200}
        assert all(r.body["item"] == item for item, r in answered.items())
        calls = [c for c in journal(workdir, "work") if set(c["items"]) & set(items)]
        assert sorted(calls[0]["items"]) == sorted(items)  # one batch held them all
        # The batch failed as a whole; then each request ran alone, once: no item ran more than twice.
        assert sorted(len(c["items"]) for c in calls[1:]) == [1] * 8
        assert collections.Counter(i for c in calls for i in c["items"]) == {item: 2 for item in items}

    def test_out_of_memory_runs_each_request_alone_and_lowers_the_ceiling_until_batches_fit(
        self, server: Server, workdir: Path, key: str
    ) -> None:
        # `squeeze` (max_batch_size=32) raises MemoryError on batches of more than 4 rows.
        answers, calls = _squeeze_wave(server, workdir, "oom")
        assert [len(c["items"]) for c in calls] == [16] + [1] * 16  # whole, then each request alone, once
        assert answers == [1] * 16
        assert stats(server, "squeeze")["batch_ceiling"] == {key: 8}  # half of what ran out of memory

        answers, calls = _squeeze_wave(server, workdir, "lower")
        assert [len(c["items"]) for c in calls][0] == 8 and sorted(answers) == [1] * 8 + [4] * 8
        assert stats(server, "squeeze")["batch_ceiling"] == {key: 4}
        assert max(collections.Counter(i for c in calls for i in c["items"]).values()) == 2

        answers, calls = _squeeze_wave(server, workdir, "capped")
        assert [len(c["items"]) for c in calls] == [4, 4, 4, 4] and answers == [4] * 16

    def test_a_request_that_runs_out_of_memory_alone_fails_alone_and_caps_no_batch(
        self, server: Server, workdir: Path
    ) -> None:
        # `swallow` runs out of memory whenever a "huge" item is in its call, even alone.
        items = [f"fine-{i}" for i in range(7)] + ["huge-1"]
        with held(server, workdir) as gate:
            replies = post_all(server, "swallow", items)
            queued(server, "swallow", 8)
            gate.open()
            answered = dict(zip(items, (f.result(timeout=30) for f in replies)))
        huge = answered.pop("huge-1")
        assert huge.status == 500 and huge.body["type"] == "MemoryError"
        assert {r.status for r in answered.values()} == {200} and {r.body for r in answered.values()} == {1}
        assert stats(server, "swallow")["batch_ceiling"] == {}  # that request's failure, not a ceiling
        with held(server, workdir) as gate:
            after = post_all(server, "swallow", [f"after-{i}" for i in range(16)])
            queued(server, "swallow", 16)
            gate.open()
            assert [f.result(timeout=30).body for f in after] == [16] * 16  # one full batch, as before
        assert [len(c["items"]) for c in journal(workdir, "swallow", "after-")] == [16]

    # -- signals -------------------------------------------------------------------------------
    def test_stats_report_queue_depth_in_flight_batches_times_and_refusals(
        self, server: Server, workdir: Path, key: str
    ) -> None:
        before = stats(server, "work")
        with held(server, workdir) as gate:
            assert stats(server, "hold")["in_flight"] == {key: 1}
            replies = post_all(server, "work", [f"signal-{i}" for i in range(3)])
            queued(server, "work", 3)
            during = stats(server, "work")
            expired = one_row(server, "work", "signal-expired", headers={"X-Request-Timeout": "0.1"})
            gate.open()
            assert {f.result(timeout=30).status for f in replies} == {200}
        after = stats(server, "work")
        assert expired.status == 504
        assert during["queue_depth"] == 3 and not any(during["in_flight"].values())
        assert during["queue_limit"] == QUEUE
        assert after["queue_depth"] == 0 and after["in_flight"] == {key: 0}
        assert after["batch_sizes"]["3"] == before["batch_sizes"].get("3", 0) + 1
        assert after["queue_time_s"]["count"] == before["queue_time_s"]["count"] + 3
        assert after["queue_time_s"]["max"] >= 0.05  # they waited behind the gate
        exec_before = before["exec_time_s"].get(key, {"count": 0})["count"]
        assert after["exec_time_s"][key]["count"] == exec_before + 1 and after["exec_time_s"][key]["mean"] > 0
        assert after["refusals"]["deadline"] == before["refusals"].get("deadline", 0) + 1
        assert after["outcomes"]["ok"] == before["outcomes"].get("ok", 0) + 3

    # -- lost and stuck replicas (last: they replace the replica) -------------------------------
    def test_a_call_past_its_limit_fails_and_its_replica_is_replaced(self, server: Server, workdir: Path,
                                                                       key: str) -> None:
        before = server.get("stats").body["replicas"][key]
        gate = f"stall-{time.monotonic_ns()}"
        try:
            stuck = server.post("stall", {"gate": gate}, timeout=60)  # `stall` may run a second
            assert stuck.status == 504 and stuck.body["reason"] == "call_timeout"
            wait_until(lambda: server.get("stats").body["replicas"][key]["restarts"] == before["restarts"] + 1,
                       "the replica is rebuilt", timeout=60)
            assert server.post("whoami", {}).status == 200
            after = server.get("stats").body["replicas"][key]
            assert after["state"] == "ready" and after["stuck"] == before["stuck"] + 1
        finally:
            (workdir / gate).touch()  # a thread left running in it ends

    def test_a_result_that_cannot_leave_the_replica_fails_alone(self, server: Server, process: None) -> None:
        pid = server.post("whoami", {}).body["pid"]
        reply = server.post("opaque", {})
        assert reply.status == 500 and reply.body["type"] == "TypeError"
        assert "not JSON" in reply.body["error"]
        assert server.post("whoami", {}).body["pid"] == pid  # the replica was not lost

    def test_a_killed_replica_is_replaced_and_its_batch_runs_again_on_the_new_one(
        self, server: Server, workdir: Path, key: str, process: None
    ) -> None:
        old = server.post("whoami", {}).body["pid"]
        reruns = stats(server, "hold")["reruns"]
        with held(server, workdir) as gate:
            waiting = post_all(server, "work", ["after-kill"])[0]
            queued(server, "work", 1)
            os.kill(old, signal.SIGKILL)  # from outside: the request it ran is not to blame
            wait_until(lambda: stats(server, "hold")["reruns"] == reruns + 1, "the held request runs again",
                       timeout=60)
            gate.open()
            again = gate.holds[0].result(timeout=60)
            queued_reply = waiting.result(timeout=60)  # waited for the new replica; not lost
        assert again.status == 200 and again.body["pid"] not in (old, server.proc.pid)
        assert queued_reply.status == 200 and queued_reply.body["pid"] == again.body["pid"]
        assert server.post("whoami", {}).body["pid"] == queued_reply.body["pid"]
        assert "executor_lost" not in stats(server, "hold")["outcomes"]
        replica = server.get("stats").body["replicas"][key]
        assert replica["state"] == "ready" and replica["restarts"] >= 1
        assert server.get("readyz").body == {"status": "ready", "replicas": 1, "states": {key: "ready"}}

    def test_an_input_that_makes_its_replica_exit_is_named_the_rest_of_its_batch_runs_again_and_it_is_refused_after(
        self, server: Server, workdir: Path, process: None
    ) -> None:
        old = server.post("whoami", {}).body["pid"]
        items = ["doomed-1", "die", "doomed-2"]
        with held(server, workdir) as gate:
            replies = post_all(server, "die", items)
            queued(server, "die", 3)
            gate.open()
            answered = dict(zip(items, (f.result(timeout=60) for f in replies)))
        crashed = answered.pop("die")
        assert crashed.status == 500 and crashed.body["reason"] == "crashed"
        assert "crashed its replica" in crashed.body["error"] and "Retry-After" not in crashed.headers
        assert "refused from now on" in crashed.body["error"]  # it crashed two: its batch's, and its own alone
        assert {r.status for r in answered.values()} == {200}  # run again alone on a new replica
        assert all(r.body["pid"] != old for r in answered.values())
        ran = collections.Counter(i for c in journal(workdir, "die") for i in c["items"])
        assert ran == {"doomed-1": 2, "die": 2, "doomed-2": 2}
        again = one_row(server, "die", "die", timeout=60)  # the same input: refused without running
        assert again.status == 422 and again.body["reason"] == "quarantined"
        assert collections.Counter(i for c in journal(workdir, "die") for i in c["items"])["die"] == 2
        assert stats(server, "die")["refusals"]["quarantined"] == 1
        later = one_row(server, "die", "survivor", timeout=60)
        assert later.status == 200 and later.body["pid"] != old
        assert server.get("readyz").status == 200

    def test_a_replica_that_died_idle_is_replaced_before_it_gets_work(self, server: Server, process: None) -> None:
        old = server.post("whoami", {}).body["pid"]
        lost_before = stats(server, "work")["outcomes"].get("executor_lost", 0)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: not running(old), "the replica's process is dead")
        reply = one_row(server, "work", "after-idle-death", timeout=60)
        assert reply.status == 200 and reply.body["pid"] != old
        assert stats(server, "work")["outcomes"].get("executor_lost", 0) == lost_before  # nothing was lost


def _squeeze_wave(server: Server, workdir: Path, prefix: str) -> tuple[list, list[dict]]:
    """16 one-row requests to `squeeze` queued behind a held replica, then let go: answers and calls."""
    with held(server, workdir) as gate:
        wave = post_all(server, "squeeze", [f"{prefix}-{i}" for i in range(16)])
        queued(server, "squeeze", 16)
        gate.open()
        replies = [f.result(timeout=30) for f in wave]
    assert {r.status for r in replies} == {200}, [r.body for r in replies if r.status != 200][:1]
    return [r.body for r in replies], journal(workdir, "squeeze", prefix)
