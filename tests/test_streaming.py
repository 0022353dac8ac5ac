"""Generator APIs stream over real HTTP, in threads and worker processes alike: each value leaves as it is
yielded, a slow reader makes the producer wait, a client that leaves closes its generator, failures and limits
end a stream with an error event, and a batchable generator serves a batch of requests step by step."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import signal
import socket
import time
from urllib.parse import urlsplit

import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from gpuserve.testing.batching_client import wait_until
from gpuserve.client import AsyncClient, BadRequestError, Client, StreamError
from serving import serve
from stream_client import DONE, Event, Stream

ISOLATIONS = {"thread": "streams:Streams", "process": "streams:StreamsProcess"}
GAP_S, TOTAL_S = 1, 4  # the limited server's --stream-gap-timeout and --stream-timeout


def _served(request, tmp_path_factory, *flags):
    directory = tmp_path_factory.mktemp(f"streams-{request.param}")
    return directory, serve(ISOLATIONS[request.param], *flags, env={"STREAM_APPS_DIR": str(directory)},
                            log_dir=directory)


@pytest.fixture(scope="module", params=ISOLATIONS, ids=ISOLATIONS.keys())
def served(request, tmp_path_factory):
    directory, server = _served(request, tmp_path_factory)
    with server as running:
        yield running, directory


@pytest.fixture(scope="module", params=ISOLATIONS, ids=ISOLATIONS.keys())
def limited(request, tmp_path_factory):
    directory, server = _served(request, tmp_path_factory, "--stream-gap-timeout", str(GAP_S),
                                "--stream-timeout", str(TOTAL_S), "--max-streams", "2")
    with server as running:
        yield running, directory


def events(directory, tag, kind=None):
    path = directory / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    found = [e for e in map(json.loads, lines) if e["tag"] == tag]
    return [e for e in found if e["event"] == kind] if kind else [e["event"] for e in found]


def open_gate(directory, tag):
    (directory / f"gate-{tag}").touch()


def stats(server, api):
    return server.get("stats").body[api]


def idle(server):
    body = server.get("stats").body
    return not any(n for name, api in body.items() if name != "replicas" for n in api["in_flight"].values())


def hold_the_executor(server, directory, tag):
    """A stream that keeps the only executor busy until its gate opens."""
    held = Stream(server, "gated", {"tag": tag})
    assert held.values(1) == ["first"]
    wait_until(lambda: "waiting" in events(directory, tag), "the held stream waits at its gate")
    return held


def test_each_value_leaves_as_it_is_yielded(served):
    server, directory = served
    with Stream(server, "gated", {"tag": "first-byte"}) as stream:
        assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-request-id"]
        # The first value is here, and the method cannot end before the gate opens: it waits there.
        assert stream.values(1) == ["first"]
        wait_until(lambda: events(directory, "first-byte") == ["waiting"], "the method waits at its gate")
        open_gate(directory, "first-byte")
        assert list(stream.events()) == [Event("second"), Event(DONE)]


def test_ndjson_when_accept_asks_for_it_and_406_for_what_a_stream_cannot_be(served):
    server, _ = served
    with Stream(server, "numbers", {"n": 3}, accept="application/x-ndjson") as stream:
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        assert list(stream.lines()) == [0, 1, 2]
    with Stream(server, "numbers", {"n": 2, "fail": True}, accept="application/x-ndjson",
                headers={"X-Request-ID": "ndjson-fails"}) as stream:
        *values, error = stream.lines()
    assert values == [0, 1] and error["type"] == "ValueError" and error["request_id"] == "ndjson-fails"
    with Stream(server, "numbers", {"n": 2}, accept="application/x-ndjson;q=0.5, text/event-stream") as stream:
        assert list(stream.events()) == [Event(0), Event(1), Event(DONE)]
    with Stream(server, "numbers", {"n": 2}, accept="application/json") as refused:
        assert refused.status == 406
        assert refused.json()["allowed"] == ["text/event-stream", "application/x-ndjson"]
    with Stream(server, "nothing", {}) as empty:
        assert empty.status == 200 and list(empty.events()) == [Event(DONE)]


def test_the_openapi_document_describes_streams(served):
    server, _ = served
    document = server.get("openapi.json").body
    validate(document)
    answers = document["paths"]["/spell"]["post"]["responses"]
    assert set(answers["200"]["content"]) == {"text/event-stream", "application/x-ndjson"}
    assert answers["200"]["content"]["text/event-stream"]["x-itemSchema"] == {"type": "string"}
    assert "406" in answers and "406" not in document["paths"]["/ping"]["post"]["responses"]


def test_stream_signals_are_in_stats_and_metrics(served):
    server, _ = served
    before = stats(server, "numbers")["streams"]["values"]
    with Stream(server, "numbers", {"n": 4}) as stream:
        assert len(list(stream.events())) == 5
    assert stats(server, "numbers")["streams"] == {"open": 0, "values": before + 4, "waiting_on_readers": 0}
    text = server.get("metrics").body
    found = {(s.name, s.labels.get("api")): s.value for family in text_string_to_metric_families(text)
             for s in family.samples}
    assert found[("gpuserve_stream_values_total", "numbers")] == before + 4
    assert found[("gpuserve_streams_open", "numbers")] == 0 and ("gpuserve_streams_open", "ping") not in found


@pytest.mark.parametrize("api", ["ticks", "aticks"])
def test_a_client_that_leaves_closes_the_generator_and_frees_its_executor(served, api):
    server, directory = served
    tag = f"leaves-{api}"
    with Stream(server, api, {"tag": tag, "interval": 0.05}) as stream:  # would run for years
        assert stream.values(2) == [0, 1]
    wait_until(lambda: "closed" in events(directory, tag), "GeneratorExit (or the cancel) reaches the generator")
    wait_until(lambda: idle(server), "its executor is free again")
    assert server.post("ping", {}).body == "pong"
    assert stats(server, api)["outcomes"].get("cancelled") == 1


def test_clients_that_leave_as_their_stream_starts_leave_no_stream_behind(served):
    server, _ = served
    url = urlsplit(server.url)
    body = json.dumps({"n": 10**6}).encode()
    request = (f"POST /numbers HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    # Hang up at moments spread over the time a first value takes: some land between a stream
    # starting and its handler waking up to it.
    for i in range(200):
        with socket.create_connection((url.hostname, url.port)) as conn:
            conn.sendall(request)
            time.sleep(i * 1e-5)
    wait_until(lambda: idle(server) and stats(server, "numbers")["streams"]["open"] == 0, "no stream is left behind")
    assert list(Client(server.url).stream("numbers", {"n": 2})) == [0, 1]


def test_a_slow_reader_makes_the_producer_wait(served):
    server, directory = served
    size = 1 << 20  # a value bigger than what the sockets between us buffer
    with Stream(server, "big", {"tag": "slow", "size": size}, receive_buffer=1 << 16) as stream:
        assert len(stream.values(1)[0]) == size
        wait_until(lambda: stats(server, "big")["streams"]["waiting_on_readers"] == 1, "the producer waits")
        made = events(directory, "slow", "made")[-1]["count"]
        # One value read; the window (past its first step, a MiB); what the server's buffer (64 KiB) and the
        # sockets hold (a few MiB): a bound that does not grow with the stream.
        assert made <= 12, made
        assert "closed" not in events(directory, "slow")
        assert all(len(value) == size for value in stream.values(12))
        wait_until(lambda: events(directory, "slow", "made")[-1]["count"] > made, "reading lets it go on")
    wait_until(lambda: "closed" in events(directory, "slow"), "the generator is closed")
    wait_until(lambda: stats(server, "big")["streams"]["waiting_on_readers"] == 0, "nothing waits any more")


def test_a_failure_mid_stream_is_an_error_event_and_the_stream_beside_it_goes_on(served):
    server, directory = served
    held = hold_the_executor(server, directory, "hold-failure")
    with held, concurrent.futures.ThreadPoolExecutor(2) as pool:
        # Both queue behind the held stream, then run as one group: one generator fails, the other goes on.
        failing = pool.submit(lambda: list(Stream(server, "numbers", {"n": 2, "fail": True},
                                                  headers={"X-Request-ID": "fails-1"}).events()))
        wait_until(lambda: stats(server, "numbers")["queue_depth"] == 1, "the failing stream is queued")
        going_on = pool.submit(lambda: list(Stream(server, "numbers", {"n": 5}).events()))
        wait_until(lambda: stats(server, "numbers")["queue_depth"] == 2, "both are queued")
        open_gate(directory, "hold-failure")
        assert list(held.events()) == [Event("second"), Event(DONE)]
        failed, whole = failing.result(timeout=30), going_on.result(timeout=30)
    assert failed[:2] == [Event(0), Event(1)] and failed[3] == Event(DONE) and len(failed) == 4
    assert failed[2].kind == "error" and failed[2].data["type"] == "ValueError"
    assert failed[2].data["request_id"] == "fails-1" and "failed after 2 values" in failed[2].data["error"]
    assert whole == [Event(i) for i in range(5)] + [Event(DONE)]
    assert stats(server, "numbers")["batch_requests"]["2"] == 1  # the two ran as one group
    wait_until(lambda: "failed mid-stream for request fails-1" in server.log(), "the failure is logged")
    log = server.log()
    assert log.count("'numbers' failed mid-stream for request fails-1: ValueError") == 1
    assert 'raise ValueError(f"failed after {n} values")' in log


def test_a_failure_before_the_first_value_is_a_500(served):
    server, _ = served
    with Stream(server, "fails_at_once", {"tag": "at-once"}) as stream:
        assert stream.status == 500
        body = stream.json()
    assert body["type"] == "KeyError" and "at-once" in body["error"]


def test_a_batched_stream_serves_each_request_its_own_values_step_by_step(served):
    server, directory = served
    held = hold_the_executor(server, directory, "hold-batch")
    words = {"A": "abcd", "B": "ef", "C": "ghijkl"}
    with held:
        streams = {tag: Stream(server, "spell", {"word": [word], "tag": [tag]}, timeout=60)
                   for tag, word in words.items()}
        wait_until(lambda: stats(server, "spell")["queue_depth"] == 3, "all three are queued")
        open_gate(directory, "hold-batch")  # the three run as one batch
        first = {tag: stream.values(1)[0] for tag, stream in streams.items()}
        assert first == {"A": "a", "B": "e", "C": "g"}
        streams.pop("C").close()  # C's client leaves
        wait_until(lambda: stats(server, "spell")["outcomes"].get("cancelled") == 1, "C has left")
        # A request that arrives while the batch runs waits for the next batch.
        open_gate(directory, "D")
        late = Stream(server, "spell", {"word": ["xy"], "tag": ["D"]}, timeout=60)
        wait_until(lambda: stats(server, "spell")["queue_depth"] == 1, "D is queued")
        open_gate(directory, "A")  # the batch goes on
        rest = {tag: [e.data for e in stream.events()] for tag, stream in streams.items()}
        assert rest == {"A": ["b", "c", "d", DONE], "B": ["f", DONE]}
        assert [e.data for e in late.events()] == ["x", "y", DONE]
        for stream in [*streams.values(), late]:
            stream.close()
    steps = [e["rows"] for e in events(directory, "A", "step")]
    # C made one more value while its leaving was on its way, then no more; B's stream ended at its END.
    assert steps == [["A", "B", "C"], ["A", "B", "C"], ["A", "B"], ["A"], ["A"]]
    assert [e["rows"] for e in events(directory, "D", "step")] == [["D"], ["D"], ["D"]]
    assert "closed" in events(directory, "A|B|C")
    assert stats(server, "spell")["batch_requests"] == {"1": 1, "3": 1}


def test_an_async_batched_stream_that_ignores_who_left(served):
    server, directory = served
    held = hold_the_executor(server, directory, "hold-async")
    with held, concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = [pool.submit(lambda w=word: [e.data for e in Stream(server, "aspell", {"word": [w]}).events()])
                   for word in ("ab", "cdef")]
        wait_until(lambda: stats(server, "aspell")["queue_depth"] == 2, "both are queued")
        open_gate(directory, "hold-async")
        assert [r.result(timeout=30) for r in replies] == [["a", "b", DONE], ["c", "d", "e", "f", DONE]]
    assert stats(server, "aspell")["batch_requests"] == {"2": 1}


def test_a_batched_stream_takes_one_row_per_request(served):
    server, _ = served
    reply = server.post("spell", {"word": ["ab", "cd"], "tag": ["x", "y"]})
    assert reply.status == 400
    assert "parameter 'word': expected one row (each request of a streaming API is one stream), got 2 rows" \
        in reply.body["error"]


def test_the_time_to_the_first_value_is_the_request_deadline(limited):
    server, directory = limited
    with Stream(server, "silent", {"tag": "no-first", "first": False, "seconds": 600},
                headers={"X-Request-Timeout": "0.5"}) as stream:
        assert stream.status == 504 and stream.json()["reason"] == "deadline"
    wait_until(lambda: "closed" in events(directory, "no-first"), "the generator is cancelled and closed")
    assert events(directory, "no-first") == ["started", "cancelled", "closed"]


def test_a_stream_silent_for_longer_than_the_gap_limit_ends_with_an_error_event(limited):
    server, directory = limited
    with Stream(server, "silent", {"tag": "gap", "first": True, "seconds": 600}) as stream:
        found = list(stream.events())
    assert found[0] == Event("hello") and found[2] == Event(DONE) and len(found) == 3
    assert found[1].kind == "error" and found[1].data["reason"] == "deadline"
    assert f"no value for {GAP_S} s (--stream-gap-timeout)" in found[1].data["error"]
    wait_until(lambda: "closed" in events(directory, "gap"), "the generator is cancelled and closed")


def test_a_stream_longer_than_its_limit_ends_with_an_error_event(limited):
    server, directory = limited
    with Stream(server, "ticks", {"tag": "total", "interval": 0.05}) as stream:
        found = list(stream.events())
    assert found[-1] == Event(DONE) and found[-2].kind == "error"
    assert f"longer than {TOTAL_S} s (--stream-timeout)" in found[-2].data["error"]
    assert [e.data for e in found[:-2]] == list(range(len(found) - 2)) and len(found) > 10
    wait_until(lambda: "closed" in events(directory, "total"), "the generator is closed")


def test_streams_beyond_the_cap_get_a_503_with_retry_after(limited):
    server, directory = limited
    first = Stream(server, "ticks", {"tag": "cap-1", "interval": 0.05})
    assert first.values(1) == [0]
    second = Stream(server, "ticks", {"tag": "cap-2", "interval": 0.05}, timeout=60)  # queued: open as well
    with Stream(server, "ticks", {"tag": "cap-3", "interval": 0.05}) as third:
        assert third.status == 503 and third.headers["retry-after"] == "1"
        assert third.json()["reason"] == "streams_full"
    first.close()
    assert second.values(1) == [0]
    second.close()
    wait_until(lambda: stats(server, "ticks")["streams"]["open"] == 0, "both places are free again")
    assert stats(server, "ticks")["refusals"] == {"streams_full": 1}
    assert re.search(r'"POST /ticks HTTP/1.1" 503 ', server.log())


def test_the_clients_read_a_stream_value_by_value(served):
    server, _ = served
    client = Client(server.url)
    assert list(client.stream("numbers", {"n": 3})) == [0, 1, 2]
    values = client.stream("numbers", {"n": 2, "fail": True}, request_id="client-fails")
    assert [next(values), next(values)] == [0, 1]
    with pytest.raises(StreamError) as failed:
        next(values)
    assert failed.value.body["type"] == "ValueError" and failed.value.request_id == "client-fails"
    with pytest.raises(BadRequestError):
        list(client.stream("numbers", {"n": "three"}))

    async def read():
        async with AsyncClient(server.url) as client:
            found = [value async for value in client.stream("spell", {"word": ["hey"], "tag": ["async-client"]})]
            with pytest.raises(StreamError):
                async for _ in client.stream("numbers", {"n": 1, "fail": True}):
                    pass
            return found

    open_gate(served[1], "async-client")
    assert asyncio.run(read()) == ["h", "e", "y"]


@pytest.mark.parametrize("service", ISOLATIONS.values(), ids=ISOLATIONS.keys())
def test_a_server_that_stops_ends_running_streams_with_an_error_event(tmp_path, service):
    with serve(service, "--drain-timeout", "2", env={"STREAM_APPS_DIR": str(tmp_path)}, log_dir=tmp_path) as server:
        with Stream(server, "ticks", {"tag": "stopping", "interval": 0.05}) as stream:
            assert stream.values(1) == [0]
            server.proc.send_signal(signal.SIGTERM)
            found = list(stream.events())
        assert server.proc.wait(timeout=30) == 0
    assert found[-1] == Event(DONE) and found[-2].kind == "error"
    assert found[-2].data["reason"] == "shutting_down"
    if service == ISOLATIONS["thread"]:  # a worker process is ended with what runs in it
        wait_until(lambda: "closed" in events(tmp_path, "stopping"), "the generator is closed")
