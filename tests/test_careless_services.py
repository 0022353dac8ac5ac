"""What a careless service returns or raises fails the request it belongs to, and nothing else: not the other
requests of its group, not its replica (a worker process that died would be rebuilt and its input blamed)."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.error
import urllib.request

import pytest

from serving import serve

GOOD, BAD = [1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]


def _infer(server, rows):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": rows}]}).encode()
    request = urllib.request.Request(f"{server.url}/v2/models/record/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read())


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_result_or_an_error_that_cannot_be_framed_fails_its_own_request_only(tmp_path, isolation):
    with serve("tensors:Sloppy", "--isolation", isolation, log_dir=tmp_path) as server, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        pid = server.post("whoami", {}).body
        for _ in range(3):  # the replica learns that calls are quick: unbatched ones then go to it in groups
            assert {status for status, _ in pool.map(lambda r: _infer(server, r), [GOOD] * 16)} == {200}
        for _ in range(3):  # a crash would quarantine the input by the third time
            rows = [GOOD] * 8 + [BAD] + [GOOD] * 7  # sent at once: the bad one in a group with good ones
            answers = list(pool.map(lambda r: _infer(server, r), rows))
            status, body = answers.pop(8)
            assert all(status == 200 for status, _ in answers), answers
            assert status == 500 and body["type"] == "KeyError" and "cannot be encoded" in body["error"], body
        reply = server.post("unprintable", {})
        assert reply.status == 500 and reply.body["type"] == "Unprintable", reply.body
        assert "its str() raised" in reply.body["error"]
        assert server.post("whoami", {}).body == pid  # the same replica throughout
        assert server.get("readyz").body["states"] and all(
            state == "ready" for state in server.get("readyz").body["states"].values())
