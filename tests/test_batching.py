"""The batcher, observed through a real server: batching, backpressure, deadlines,
cancellation, failure isolation, out-of-memory splitting, lost executors, signals.

Executors are held busy by gates (`batching_apps.Batching.hold`) so that requests
queue deterministically; the model's journal proves which items ever ran.
"""

import collections
import concurrent.futures
import os
import random
import signal
import statistics
import time

import pytest

from apps.batching_client import held, journal, one_row, post_and_leave, seen, stats, wait_until
from serving import serve

KEY = "cpu:0#0.0"  # the one executor of a default CPU server: device cpu:0, worker 0, instance 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("batching")


def serve_batching(workdir, *args, **kw):
    return serve("batching_apps:Batching", *args, env={"BATCH_APPS_DIR": str(workdir)}, log_dir=workdir, **kw)


@pytest.fixture(scope="module")
def server(workdir):
    with serve_batching(workdir, "--queue-size", "16") as s:
        yield s


def post_all(server, api, items, **kw):
    """Post one request per item concurrently; the futures of their replies."""
    pool = concurrent.futures.ThreadPoolExecutor(len(items))
    futures = [pool.submit(one_row, server, api, i, **kw) for i in items]
    pool.shutdown(wait=False)
    return futures


def queued(server, api, depth):
    wait_until(lambda: stats(server, api)["queue_depth"] == depth, f"{depth} {api} request(s) are queued")


def timed_post(server, api, item, **kw):
    start = time.monotonic()
    reply = one_row(server, api, item, **kw)
    return reply, time.monotonic() - start


# -- policy ------------------------------------------------------------------------------


def test_batch_sizes_grow_with_concurrency(tmp_path):
    rng = random.Random(0)
    rows = [[rng.uniform(-1, 1) for _ in range(16)] for _ in range(32 * 4)]
    with serve("batching_torch:Mlp", "--cpu-devices", "2", "--workers", "2", log_dir=tmp_path) as server:
        alone = [server.post("predict", {"x": [row]}).body[0] for row in rows[:8]]

        def client(first):  # one of 32 clients, each sending 4 requests in turn
            return {i: server.post("predict", {"x": [rows[i]]}, timeout=30).body[0]
                    for i in range(first, len(rows), 32)}

        crowd = {}
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for replies in pool.map(client, range(32)):
                crowd.update(replies)
        snapshot = stats(server, "predict")
    assert [r["batch"] for r in alone] == [1] * 8
    sizes = [r["batch"] for r in crowd.values()]
    # Loose bounds: a loaded 2-core machine sends slower, but batches must still grow.
    assert len(sizes) == 128 and max(sizes) >= 4 and statistics.mean(sizes) >= 2, sizes
    assert [crowd[i]["label"] for i in range(8)] == [r["label"] for r in alone]  # each row got its own answer
    assert {r["device"] for r in crowd.values()} == {"cpu:0", "cpu:1"}  # both executors took batches
    assert sum(int(size) * n for size, n in snapshot["batch_sizes"].items()) == 8 + 128


def test_latency_budget_refuses_early_what_cannot_make_it(server, workdir):
    # `timed` takes 0.2 s per request (batches of one) and allows max_latency_ms=700.
    for i in range(3):  # evidence for the latency model
        assert one_row(server, "timed", f"warm-{i}").status == 200
    before = stats(server, "timed")["refusals"].get("latency", 0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: (f"late-{i}", *timed_post(server, "timed", f"late-{i}")), range(8)))
    refused = [(item, reply, took) for item, reply, took in results if reply.status == 503]
    served = [item for item, reply, _ in results if reply.status == 200]
    assert len(refused) + len(served) == 8
    assert served and refused, "8 requests of 0.2 s each cannot all make 0.7 s, and the first can"
    for _, reply, _ in refused:
        assert reply.body["reason"] == "latency" and "max_latency_ms=700" in reply.body["error"]
        assert int(reply.headers["Retry-After"]) >= 1
    assert min(took for _, _, took in refused) < 0.5  # refused on arrival, not after waiting
    assert seen(workdir, "timed", "late-") == set(served)  # refused requests never ran
    assert stats(server, "timed")["refusals"]["latency"] == before + len(refused)


def test_a_latency_model_that_refuses_everything_still_learns_the_device_got_faster(server, workdir):
    for i in range(3):  # 0.6 s each: the model now predicts more than the 0.5 s budget
        assert server.post("warms_up", {"item": f"cold-{i}"}).status == 200
    refused = server.post("warms_up", {"item": "refused"})
    assert refused.status == 503 and refused.body["reason"] == "latency"
    assert "refused" not in seen(workdir, "warms_up", "refused")
    time.sleep(1.1)  # no fresh evidence for a while: one request runs as a probe
    assert server.post("warms_up", {"item": "probe"}).status == 200
    replies = [server.post("warms_up", {"item": f"warm-{i}"}) for i in range(5)]
    assert [r.status for r in replies] == [200] * 5, "the fast device is no longer refused"


# -- backpressure --------------------------------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_at_once(server, workdir):
    with held(server, workdir) as gate:
        waiting = post_all(server, "work", [f"full-{i}" for i in range(16)])
        queued(server, "work", 16)
        before = stats(server, "work")["refusals"].get("queue_full", 0)
        reply, took = timed_post(server, "work", "full-extra")
        assert reply.status == 503 and took < 0.5
        assert reply.body["reason"] == "queue_full" and "16 waiting" in reply.body["error"]
        assert int(reply.headers["Retry-After"]) >= 1
        gate.open()
        assert [f.result(timeout=30).status for f in waiting] == [200] * 16
    assert stats(server, "work")["refusals"]["queue_full"] == before + 1
    assert "full-extra" not in seen(workdir, "work", "full-")


# -- deadlines and cancellation ------------------------------------------------------------


def test_request_timeout_header_gives_504_on_time_while_the_executor_is_stuck(server, workdir):
    before = stats(server, "work")["refusals"].get("deadline", 0)
    with held(server, workdir):
        reply, took = timed_post(server, "work", "deadline-1", headers={"X-Request-Timeout": "0.3"})
        assert reply.status == 504 and 0.3 <= took < 1.5
        assert reply.body["reason"] == "deadline" and "0.3 s" in reply.body["error"]
        assert "Retry-After" not in reply.headers
    assert one_row(server, "work", "deadline-after").status == 200
    assert seen(workdir, "work", "deadline-") == {"deadline-after"}  # the expired one never ran
    assert stats(server, "work")["refusals"]["deadline"] == before + 1


def test_server_wide_timeout_gives_504_and_the_header_overrides_it(tmp_path):
    # A request may ask for more than the server's default only up to --max-request-timeout.
    with serve_batching(tmp_path, "--timeout", "0.5", "--max-request-timeout", "10") as server, \
            held(server, tmp_path) as gate:
        patient = post_all(server, "work", ["patient"], headers={"X-Request-Timeout": "10"})[0]
        reply, took = timed_post(server, "work", "impatient")
        assert reply.status == 504 and 0.5 <= took < 2 and "0.5 s" in reply.body["error"]
        gate.open()
        assert patient.result(timeout=30).status == 200  # waited past the server's 0.5 s
        assert seen(tmp_path, "work") == {"patient"}


def test_a_disconnected_clients_request_never_reaches_the_model(server, workdir):
    before = stats(server, "work")["refusals"].get("cancelled", 0)
    with held(server, workdir):
        post_and_leave(server, "work", {"item": ["gone-1"]}, queued=lambda: stats(server, "work")["queue_depth"] == 1)
        # The server notices the hang-up while the item still waits for the executor.
        wait_until(lambda: stats(server, "work")["refusals"].get("cancelled", 0) == before + 1,
                   "the server counts the request as cancelled")
        assert stats(server, "work")["queue_depth"] == 0
    assert one_row(server, "work", "gone-after").status == 200
    assert seen(workdir, "work", "gone-") == {"gone-after"}


def test_clients_that_left_do_not_keep_a_full_queue_full(server, workdir):
    before = stats(server, "work")
    limit = before["queue_limit"]
    with held(server, workdir):
        # Fill the queue with clients that hang up; nothing reads /stats meanwhile,
        # so only the batcher itself can notice that they left.
        for i in range(limit):
            post_and_leave(server, "work", {"item": [f"left-{i}"]}, queued=lambda: time.sleep(0.05) is None)
        time.sleep(0.2)
        # Admitted, it waits behind the held executor until its own deadline (504);
        # refused by a queue still counting the departed, it would get 503 at once.
        late = one_row(server, "work", "after-the-full-queue", headers={"X-Request-Timeout": "0.3"})
        assert late.status == 504 and late.body["reason"] == "deadline", late
    after = stats(server, "work")
    assert after["refusals"].get("cancelled", 0) == before["refusals"].get("cancelled", 0) + limit
    assert after["refusals"].get("queue_full", 0) == before["refusals"].get("queue_full", 0)
    assert seen(workdir, "work", "left-") == set()


# -- failures ------------------------------------------------------------------------------


def test_a_poisoned_item_fails_alone_and_the_rest_of_its_batch_succeeds(server, workdir):
    items = [f"mixed-{i}" for i in range(7)] + ["poison-mixed"]
    with held(server, workdir) as gate:
        replies = post_all(server, "work", items)
        queued(server, "work", 8)
        gate.open()
        replies = dict(zip(items, (f.result(timeout=30) for f in replies)))
    poisoned = replies.pop("poison-mixed")
    assert poisoned.status == 500 and poisoned.body["type"] == "ValueError"
    assert "poison-mixed" in poisoned.body["error"]
    assert {r.status for r in replies.values()} == {200}
    assert all(r.body["item"] == item for item, r in replies.items())
    assert sorted(journal(workdir, "work", "mixed-")[0]["items"]) == sorted(items)  # one batch held them all


def test_out_of_memory_splits_the_batch_and_lowers_the_ceiling(server, workdir):
    # `squeeze` raises MemoryError on batches of more than 4.
    with held(server, workdir) as gate:
        first = post_all(server, "squeeze", [f"oom-{i}" for i in range(16)])
        queued(server, "squeeze", 16)
        gate.open()
        assert {f.result(timeout=30).status for f in first} == {200}
    sizes = [len(c["items"]) for c in journal(workdir, "squeeze", "oom-")]
    assert sizes[0] == 16 and 8 in sizes  # tried whole, then halved until it fit
    assert sorted(s for s in sizes if s <= 4) == [4, 4, 4, 4]
    assert stats(server, "squeeze")["batch_ceiling"] == {KEY: 4}

    with held(server, workdir) as gate:
        second = post_all(server, "squeeze", [f"capped-{i}" for i in range(16)])
        queued(server, "squeeze", 16)
        gate.open()
        assert [f.result(timeout=30).body for f in second] == [4] * 16
    assert [len(c["items"]) for c in journal(workdir, "squeeze", "capped-")] == [4, 4, 4, 4]


@pytest.fixture(scope="module")
def process_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("process")
    with serve_batching(directory, "--isolation", "process") as s:
        yield s, directory


def test_a_killed_process_executor_is_restarted_and_its_requests_fail_fast(process_server):
    server, directory = process_server
    old = server.post("whoami", {}).body["pid"]
    assert old != server.proc.pid
    with held(server, directory) as gate:
        waiting = post_all(server, "work", ["after-kill"])[0]
        queued(server, "work", 1)
        start = time.monotonic()
        os.kill(old, signal.SIGKILL)
        lost = gate.holds[0].result(timeout=10)
        assert time.monotonic() - start < 2
        assert lost.status == 503 and lost.body["reason"] == "executor_lost"
        assert int(lost.headers["Retry-After"]) >= 1
        queued_reply = waiting.result(timeout=30)  # waited for the new process; not lost
    assert queued_reply.status == 200 and queued_reply.body["pid"] not in (old, server.proc.pid)
    assert server.post("whoami", {}).body["pid"] == queued_reply.body["pid"]
    assert stats(server, "hold")["outcomes"]["executor_lost"] == 1


def test_a_method_that_exits_its_process_fails_its_batch_with_503_and_the_next_succeeds(process_server):
    server, directory = process_server
    old = server.post("whoami", {}).body["pid"]
    with held(server, directory) as gate:
        replies = post_all(server, "die", ["doomed-1", "die", "doomed-2"])
        queued(server, "die", 3)
        gate.open()
        replies = [f.result(timeout=10) for f in replies]
    assert [r.status for r in replies] == [503] * 3
    assert all(r.body["reason"] == "executor_lost" and "died" in r.body["error"] for r in replies)
    later = one_row(server, "die", "survivor", timeout=30)
    assert later.status == 200 and later.body["pid"] != old
    assert server.get("readyz").status == 200


def test_a_process_executor_that_died_idle_is_replaced_before_it_gets_work(process_server):
    server, directory = process_server
    old = server.post("whoami", {}).body["pid"]
    lost_before = stats(server, "work")["outcomes"].get("executor_lost", 0)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not running(old), "the worker process is dead")
    reply = one_row(server, "work", "after-idle-death", timeout=30)
    assert reply.status == 200 and reply.body["pid"] != old
    assert stats(server, "work")["outcomes"].get("executor_lost", 0) == lost_before  # nothing was lost


def test_a_result_that_cannot_leave_the_worker_process_fails_alone(process_server):
    server, _ = process_server
    pid = server.post("whoami", {}).body["pid"]
    reply = server.post("opaque", {})
    assert reply.status == 500 and reply.body["type"] == "TypeError"
    assert "not JSON" in reply.body["error"]
    assert server.post("whoami", {}).body["pid"] == pid  # the worker was not lost


def running(pid):
    """False once the process is gone or a zombie with no thread left, ready to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z" or len(os.listdir(f"/proc/{pid}/task")) > 1
    except FileNotFoundError:
        return False


# -- overload ------------------------------------------------------------------------------


def test_a_burst_of_four_times_the_queue_gets_an_answer_for_every_request(tmp_path):
    with serve_batching(tmp_path, "--queue-size", "8", "--cpu-devices", "2", "--workers", "2") as server:
        with held(server, tmp_path, count=2) as gate:  # both executors busy: the burst must queue
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                burst = [
                    pool.submit(one_row, server, "work", f"burst-{i}", timeout=15,
                                headers={"X-Request-Timeout": "0.5" if i % 4 == 0 else "10"})
                    for i in range(32)
                ]
                wait_until(lambda: sum(f.done() for f in burst) >= 24, "the overflow is refused")
                gate.open()
                replies = [f.result() for f in burst]  # a client timeout here would be a hang
        statuses = collections.Counter(r.status for r in replies)
        assert set(statuses) <= {200, 503, 504}, statuses
        # 8 fit in the queue and at most 8 places free up as the short deadlines pass.
        assert statuses[503] >= 16 and statuses[200] >= 1
        assert all(r.body["reason"] == "queue_full" for r in replies if r.status == 503)
        snapshot = stats(server, "work")
        assert snapshot["refusals"]["queue_full"] == statuses[503]
        assert snapshot["refusals"].get("deadline", 0) + snapshot["outcomes"].get("deadline", 0) == statuses[504]
        assert snapshot["queue_depth"] == 0 and not any(snapshot["in_flight"].values())
        assert one_row(server, "work", "after-burst").status == 200


# -- signals -------------------------------------------------------------------------------


def test_stats_report_queue_depth_in_flight_batches_times_and_refusals(server, workdir):
    before = stats(server, "work")
    with held(server, workdir) as gate:
        assert stats(server, "hold")["in_flight"] == {KEY: 1}
        replies = post_all(server, "work", [f"signal-{i}" for i in range(3)])
        queued(server, "work", 3)
        during = stats(server, "work")
        expired = one_row(server, "work", "signal-expired", headers={"X-Request-Timeout": "0.1"})
        gate.open()
        assert {f.result(timeout=30).status for f in replies} == {200}
    after = stats(server, "work")
    assert expired.status == 504
    assert during["queue_depth"] == 3 and not any(during["in_flight"].values())
    assert during["queue_limit"] == 16
    assert after["queue_depth"] == 0 and after["in_flight"] == {KEY: 0}
    assert after["batch_sizes"]["3"] == before["batch_sizes"].get("3", 0) + 1
    assert after["queue_time_s"]["count"] == before["queue_time_s"]["count"] + 3
    assert after["queue_time_s"]["max"] >= 0.05  # they waited behind the gate
    exec_before = before["exec_time_s"].get(KEY, {"count": 0})["count"]
    assert after["exec_time_s"][KEY]["count"] == exec_before + 1 and after["exec_time_s"][KEY]["mean"] > 0
    assert after["refusals"]["deadline"] == before["refusals"].get("deadline", 0) + 1
    assert after["outcomes"]["ok"] == before["outcomes"].get("ok", 0) + 3
    assert set(server.get("stats").body) == {"hold", "whoami", "opaque", "work", "squeeze", "timed", "warms_up", "die"}
