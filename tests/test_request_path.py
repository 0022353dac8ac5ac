"""A real `python -m gpuserve serve` subprocess answered over real HTTP."""

import concurrent.futures
import time

import pytest

from serving import serve, wait_until_running


@pytest.fixture(scope="module")
def basics(tmp_path_factory):
    with serve("basics:Basics", "--max-body-size", "4096", log_dir=tmp_path_factory.mktemp("logs")) as server:
        yield server


def test_post_runs_the_method_and_returns_its_json(basics):
    reply = basics.post("echo", {"value": [1, 2.5, "x"], "suffix": "!"})
    assert reply.status == 200
    assert reply.body["value"] == [1, 2.5, "x"] and reply.body["suffix"] == "!"


def test_model_code_runs_in_an_executor_thread_not_the_event_loop(basics):
    assert basics.post("echo", {"value": 1}).body["thread"].startswith("gpuserve-")


def test_optional_parameter_takes_its_default(basics):
    assert basics.post("echo", {"value": 1}).body["suffix"] == ""


def test_livez_and_readyz(basics):
    assert basics.get("livez").status == 200
    ready = basics.get("readyz")
    assert ready.status == 200 and ready.body["replicas"] == 1


def test_malformed_json_is_400(basics):
    reply = basics.post("echo", b"{not json")
    assert reply.status == 400 and "malformed JSON" in reply.body["error"]


def test_body_that_is_not_an_object_is_400(basics):
    reply = basics.post("echo", b"[1, 2]")
    assert reply.status == 400 and "JSON object" in reply.body["error"]


def test_missing_parameter_is_400_naming_it(basics):
    reply = basics.post("echo", {"suffix": "x"})
    assert reply.status == 400 and "'value'" in reply.body["error"] and "missing" in reply.body["error"]


def test_unknown_parameter_is_400_naming_it(basics):
    reply = basics.post("echo", {"value": 1, "colour": "red"})
    assert reply.status == 400 and "'colour'" in reply.body["error"]


def test_unknown_route_is_404(basics):
    reply = basics.post("nope", {"value": 1})
    assert reply.status == 404 and "/nope" in reply.body["error"]


def test_wrong_method_on_an_api_is_405(basics):
    assert basics.get("echo").status == 405


def test_body_over_the_limit_is_413(basics):
    reply = basics.post("echo", {"value": "x" * 5000})
    assert reply.status == 413 and "4096" in reply.body["error"]


def test_user_code_raising_is_500_with_the_type_and_the_server_keeps_serving(basics):
    reply = basics.post("fail", {"kind": "poison"})
    assert reply.status == 500
    assert reply.body["type"] == "ValueError" and "poison" in reply.body["error"]
    assert basics.post("echo", {"value": "still here"}).status == 200


def test_a_wrong_number_of_results_fails_only_the_request_that_causes_it_and_names_only_its_rows(basics):
    # `wrong_length` drops negative rows from its results: one such row in a batch makes it short.
    assert basics.post("wrong_length", {"n": [1, 2]}).body == [1, 2]
    reruns = basics.get("stats").body["wrong_length"]["reruns"]
    # Hold the executor so the next requests queue up and run as one batch.
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        busy = pool.submit(basics.post, "slow", {"seconds": 1.0})
        wait_until_running(basics, "slow")
        values = [0, 1, 2, -1, 4, 5, 6, 7]
        replies = list(pool.map(lambda i: basics.post("wrong_length", {"n": [i]}), values))
        assert busy.result().status == 200
    bad = replies.pop(3)
    assert [r.status for r in replies] == [200] * 7 and [r.body for r in replies] == [[v] for v in values if v >= 0]
    assert bad.status == 500
    message = bad.body["error"]
    assert "'wrong_length'" in message and "returned 0 results for 1 row(s)" in message  # its own rows only
    stats = basics.get("stats").body["wrong_length"]
    assert stats["reruns"] == reruns + 8  # the batch failed as a whole: each request ran again, alone
    assert stats["batch_requests"]["8"] >= 1


def test_batches_larger_than_one_form_under_concurrent_load(basics):
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        sizes = list(pool.map(lambda i: basics.post("sizes", {"n": [i]}).body[0], range(64)))
    assert all(isinstance(s, int) and 1 <= s <= 16 for s in sizes)
    assert max(sizes) > 1, f"no batch larger than one formed: {sizes}"
    stats = basics.get("stats").body["sizes"]
    assert sum(int(k) * v for k, v in stats["batch_sizes"].items()) >= 64


def test_readyz_is_503_until_every_replica_is_built(tmp_path):
    with serve("basics:SlowStart", log_dir=tmp_path, wait_ready=False) as server:
        assert server.get("livez").status == 200
        early = server.get("readyz")
        assert early.status == 503 and "still being built" in early.body["error"]
        assert server.post("ping", {}).status == 503
        deadline = time.monotonic() + 30
        while server.get("readyz").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert server.post("ping", {}).body == "pong"


def test_a_failing_constructor_stops_the_server_with_its_error(tmp_path):
    with pytest.raises(RuntimeError) as info:
        with serve("basics:BrokenInit", log_dir=tmp_path):
            pass
    assert "weights file missing" in str(info.value)


def test_queued_calls_of_an_unbatched_api_share_a_hop_but_run_one_by_one(basics):
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        busy = pool.submit(basics.post, "slow", {"seconds": 1.0})
        wait_until_running(basics, "slow")
        echoes = [pool.submit(basics.post, "echo", {"value": i}) for i in range(6)]
        failing = pool.submit(basics.post, "fail", {"kind": "grouped"})
        replies = [f.result() for f in echoes]
        assert busy.result().status == 200
    assert [r.body["value"] for r in replies] == list(range(6))  # each call got its own arguments
    assert failing.result().status == 500 and "grouped" in failing.result().body["error"]
    groups = basics.get("stats").body["echo"]["batch_sizes"]
    assert max(int(size) for size in groups) > 1, groups  # several calls went over in one hop


def test_groups_of_unbatched_calls_grow_only_as_far_as_their_calls_are_quick(tmp_path):
    with serve("basics:Basics", log_dir=tmp_path) as server:
        for i in range(3):  # the latency model learns what one call of each costs
            assert server.post("echo", {"value": i}).status == 200
            assert server.post("slow", {"seconds": 0.005}).status == 200
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            busy = pool.submit(server.post, "slow", {"seconds": 1.0})
            wait_until_running(server, "slow")
            echoes = [pool.submit(server.post, "echo", {"value": i}) for i in range(40)]
            slows = [pool.submit(server.post, "slow", {"seconds": 0.005}) for _ in range(4)]
            deadline = time.monotonic() + 10
            while sum(server.get("stats").body[api]["queue_depth"] for api in ("echo", "slow")) < 44:
                assert time.monotonic() < deadline and not busy.done(), "the calls never all queued"
                time.sleep(0.02)
            assert all(f.result().status == 200 for f in [busy, *echoes, *slows])
        stats = server.get("stats").body
    # Microsecond calls: the 40 queued went over in far fewer hops than 16 at a time would take.
    assert max(int(size) for size in stats["echo"]["batch_sizes"]) > 16, stats["echo"]["batch_sizes"]
    # 5 ms calls: a group of two would hold the first answer back past the 2 ms group budget.
    assert set(stats["slow"]["batch_sizes"]) == {"1"}, stats["slow"]["batch_sizes"]
