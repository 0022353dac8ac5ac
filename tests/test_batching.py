"""The batcher's policy, observed through a real server: batch sizes, the latency budget,
deadlines against the server's default, clients that left, bursts.

Executors are held busy by gates (`gpuserve.testing.batching_app`'s `hold`) so
that requests queue deterministically; the model's journal proves which items
ever ran. What every kind of executor must keep (backpressure, deadlines,
cancellation, failure isolation, out-of-memory splitting, `/stats`, lost
replicas) is the shared suite in `test_executor_conformance.py`.
"""

import collections
import concurrent.futures
import random
import statistics
import time

import pytest

from gpuserve.testing.batching_client import (
    held, one_row, post_all, post_and_leave, seen, stats, timed_post, wait_until,
)
from serving import serve

APP = "gpuserve.testing.batching_app:Batching"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("batching")


def serve_batching(workdir, *args, **kw):
    return serve(APP, *args, env={"BATCH_APPS_DIR": str(workdir)}, log_dir=workdir, **kw)


@pytest.fixture(scope="module")
def server(workdir):
    with serve_batching(workdir, "--queue-size", "16") as s:
        yield s


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


# -- deadlines and cancellation ------------------------------------------------------------


def test_server_wide_timeout_gives_504_and_the_header_overrides_it(tmp_path):
    # The call limit is raised above the deadline: the executor is held on purpose. A request may ask
    # for more than the server's default only up to --max-request-timeout.
    with serve_batching(tmp_path, "--timeout", "0.5", "--call-timeout", "30", "--max-request-timeout", "10") \
            as server, held(server, tmp_path) as gate:
        patient = post_all(server, "work", ["patient"], headers={"X-Request-Timeout": "10"})[0]
        reply, took = timed_post(server, "work", "impatient")
        # A deadline may fire up to the loop timers' resolution (1 ms) early.
        assert reply.status == 504 and 0.499 <= took < 2 and "0.5 s" in reply.body["error"]
        gate.open()
        assert patient.result(timeout=30).status == 200  # waited past the server's 0.5 s
        assert seen(tmp_path, "work") == {"patient"}


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
