"""Services as users write them, through a real server: annotations checked at the door, rows per request.

Every bad body gets a 400 that names the parameter, the path inside it, what
was expected and what came; the server then answers the next good request.
"""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from gpuserve.testing.batching_client import stats
from serving import serve


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("typed")
    with serve("typed:Typed", env={"TYPED_APPS_DIR": str(directory)}, log_dir=directory) as server:
        yield server


def bad(server, api, body, *, param, path="", expected, got=None):
    """`body` is refused with 400 naming `param`, `path`, what was `expected` and what it `got`."""
    reply = server.post(api, body if isinstance(body, (bytes, dict)) else json.dumps(body).encode())
    assert reply.status == 400, reply.body
    [error] = [e for e in reply.body["errors"] if e["param"] == param and e["path"] == path]
    assert expected in error["expected"], error
    if got is not None:
        assert error["got"] == got, error
    assert f"parameter {param!r}{path}" in reply.body["error"]
    assert reply.body["request_id"] == reply.headers["X-Request-ID"]
    return reply


def test_json_types_are_checked_strictly(typed):
    assert typed.post("add", {"a": 2, "b": 3}).body == 5
    bad(typed, "add", {"a": "x", "b": "y"}, param="a", expected="integer", got='"x"')
    bad(typed, "add", {"a": "1", "b": 2}, param="a", expected="integer", got='"1"')  # no coercion
    bad(typed, "add", {"a": 1.5, "b": 2}, param="a", expected="integer", got="1.5")
    bad(typed, "add", {"a": True, "b": 2}, param="a", expected="integer", got="true")
    bad(typed, "add", {"a": 1}, param="b", expected="missing")
    bad(typed, "add", {"a": 1, "b": 2, "c": 3}, param="c", expected="unknown")
    assert typed.post("add", {"a": -4, "b": 1}).body == -3


def test_models_literals_and_optionals(typed):
    assert typed.post("mirror", {"p": {"x": 1, "y": 2.5}}).body == {"x": 2.5, "y": 1.0, "label": "a"}
    bad(typed, "mirror", {"p": {"x": 1}}, param="p", path="['y']", expected="missing")
    bad(typed, "mirror", {"p": {"x": 1, "y": 2, "label": "c"}}, param="p", path="['label']", expected="'a' or 'b'")
    assert typed.post("choose", {"mode": "fast"}).body == {"mode": "fast", "limit": None, "weights": None}
    assert typed.post("choose", {"mode": "exact", "limit": None, "weights": {"k": 1}}).body["weights"] == {"k": 1.0}
    bad(typed, "choose", {"mode": "slow"}, param="mode", expected="'fast' or 'exact'", got='"slow"')
    bad(typed, "choose", {"mode": "fast", "weights": {"k": "heavy"}}, param="weights", path="['k']",
        expected="number")


def test_unannotated_parameters_pass_as_they_arrive(typed):
    assert typed.post("untyped", {"value": {"any": ["thing", 1]}}).body == {"value": {"any": ["thing", 1]},
                                                                            "extra": None}


@pytest.mark.parametrize("body, path, expected", [
    ({"x": [[1, 2]], "factor": [1]}, "[0]", "at least 3"),  # a row of the wrong width
    ({"x": [[1, 2, "3"]], "factor": [1]}, "[0][2]", "number"),  # a string in a number array
    ({"x": [[1, 2, True]], "factor": [1]}, "[0][2]", "number"),  # a boolean is not a number
    ({"x": [[1, 2, 1e39]], "factor": [1]}, "[0][2]", "<= 3.40282e+38"),  # beyond float32
    ({"x": [1, 2, 3], "factor": [1]}, "[0]", "list"),  # not nested: a row is a list
    ({"x": "hello", "factor": [1]}, "", "list"),
])
def test_arrays_of_the_wrong_dtype_or_shape_are_refused(typed, body, path, expected):
    bad(typed, "scale", body, param="x", path=path, expected=expected)
    assert typed.post("scale", {"x": [[1, 2, 3]], "factor": [2]}).body == [{"row": [2, 4, 6], "batch_rows": 1}]


def test_an_unbatched_array_keeps_its_shape_and_dtype_range(typed):
    assert typed.post("matrix", {"m": [[1, 2, 3], [4, 5, 6]]}).body == [[1, 4], [2, 5], [3, 6]]
    bad(typed, "matrix", {"m": [[1, 2], [3, 4], [5, 6]]}, param="m", expected="at most 2")
    bad(typed, "matrix", {"m": [[1, 2], [3, 40000]]}, param="m", path="[1][1]", expected="<= 32767")
    reply = typed.post("matrix", {"m": [[1, 2], [3]]})  # ragged along a dimension of any length
    assert reply.status == 400 and "ragged" in reply.body["error"]


@pytest.mark.parametrize("raw, says", [
    (b'{"a": NaN, "b": 1}', "malformed JSON"),
    (b'{"a": Infinity, "b": 1}', "malformed JSON"),
    (b'{"a": 1, "b": ' + b"[" * 1100 + b"]" * 1100 + b"}", "malformed JSON"),  # deeper than 1024 levels
    (b'[1, 2]', "expected a JSON object"),
    (b'{"a": 1, "b": 2', "malformed JSON"),
])
def test_bodies_that_are_not_valid_json_objects(typed, raw, says):
    reply = typed.post("add", raw)
    assert reply.status == 400 and says in reply.body["error"]
    assert typed.post("add", {"a": 1, "b": 1}).body == 2


def test_nan_and_infinity_in_a_float_parameter_are_refused(typed):
    # JSON cannot spell them; numbers beyond a float32's range would become infinity.
    bad(typed, "scale", {"x": [[1e39, 0, 0]], "factor": [1]}, param="x", path="[0][0]", expected="<=")


def test_each_request_carries_rows_and_gets_back_exactly_its_own(typed):
    reply = typed.post("lengths", {"sentences": ["hello", "hi", "hey there"]})
    assert reply.status == 200 and reply.body == [5, 2, 9]
    bodies = [{"sentences": [f"{'x' * i}-{j}" for j in range(1 + i % 4)]} for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda body: typed.post("lengths", body), bodies))
    for body, reply in zip(bodies, replies):
        assert reply.status == 200 and reply.body == [len(s) for s in body["sentences"]]


def test_rows_of_array_parameters_are_merged_into_one_array(typed):
    bodies = [{"x": [[i, i, i]] * (1 + i % 3), "factor": [float(i)] * (1 + i % 3)} for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda body: typed.post("scale", body), bodies))
    for i, (body, reply) in enumerate(zip(bodies, replies)):
        assert reply.status == 200
        assert [r["row"] for r in reply.body] == [[i * i] * 3] * len(body["x"])
        assert all(r["batch_rows"] <= 8 for r in reply.body)  # max_batch_size counts rows
    merged = [r["batch_rows"] for reply in replies for r in reply.body]
    assert max(merged) > 3, "no batch held the rows of more than one request"


def test_row_counts_are_checked(typed):
    reply = typed.post("lengths", {"sentences": ["a"] * 9})
    assert reply.status == 400 and "at most 8" in reply.body["error"]
    reply = typed.post("lengths", {"sentences": []})
    assert reply.status == 400 and "at least 1" in reply.body["error"]
    reply = typed.post("scale", {"x": [[1, 2, 3], [4, 5, 6]], "factor": [1.0]})
    assert reply.status == 400 and "different numbers of rows" in reply.body["error"]
    assert "x: 2" in reply.body["error"] and "factor: 1" in reply.body["error"]
    assert typed.post("lengths", {"sentences": ["ok"]}).body == [2]


def test_stats_count_rows_and_requests_apart(typed):
    before = stats(typed, "lengths")
    assert typed.post("lengths", {"sentences": ["a", "b", "c"]}).status == 200
    after = stats(typed, "lengths")
    assert after["rows"] - before["rows"] == 3
    assert after["requests"] - before["requests"] == 1
