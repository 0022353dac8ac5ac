"""The KServe v2 protocol, driven by the clients people use: tritonclient.http and tritonclient.http.aio.

Every datatype as JSON and as binary, rows merged with other requests', the
outputs a request asks for, and the error paths: the client raises
InferenceServerException with the server's message, and the next good request
succeeds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

httpclient = pytest.importorskip("tritonclient.http")
aioclient = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

from serving import serve  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve("tensors:Tensors", "--no-access-log", log_dir=tmp_path_factory.mktemp("v2")) as s:
        yield s


@pytest.fixture
def client(server):
    with httpclient.InferenceServerClient(url=server.url.removeprefix("http://")) as c:
        yield c


def tensor(name, array, datatype, binary=True):
    given = httpclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array, binary_data=binary)
    return given


def wanted(name, binary=True):
    return httpclient.InferRequestedOutput(name, binary_data=binary)


def test_health_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("scale")
    assert client.is_model_ready("scale", "1") and not client.is_model_ready("scale", "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "gpuserve" and {"binary_tensor_data", "model_configuration"} <= set(meta["extensions"])
    model = client.get_model_metadata("score")
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]  # batch dimension included
    assert model["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]},
                                {"name": "scores", "datatype": "FP64", "shape": [-1, -1]}]
    config = client.get_model_config("scale")
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert client.get_model_config("count")["max_batch_size"] == 0


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_rows_in_and_out(client, binary):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = client.infer("scale", [tensor("x", x, "FP32", binary)], outputs=[wanted("output", binary)])
    np.testing.assert_array_equal(result.as_numpy("output"), x * 2)
    assert (result.get_output("output").get("parameters") is not None) == binary


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_int64_bool_and_bytes(client, binary):
    ids = np.array([3, 4, 2**40], dtype=np.int64)
    result = client.infer("count", [tensor("ids", ids, "INT64", binary)], outputs=[wanted("output", binary)])
    assert result.as_numpy("output").tolist() == [3 + 4 + 2**40]
    flags = np.array([True, False, True])
    result = client.infer("negate", [tensor("flags", flags, "BOOL", binary)], outputs=[wanted("output", binary)])
    assert result.as_numpy("output").tolist() == [False, True, False]
    text = np.array([b"hello", "naïve".encode()], dtype=object)
    result = client.infer("shout", [tensor("text", text, "BYTES", binary)], outputs=[wanted("output", binary)])
    assert [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("output")] == [
        b"HELLO!", "NAÏVE!".encode()]


def test_fp16_as_binary_and_refused_as_json(client):
    x = np.array([1.0, 3.0, -0.5], dtype=np.float16)
    result = client.infer("half", [tensor("x", x, "FP16")])  # no outputs named: all, as binary
    np.testing.assert_array_equal(result.as_numpy("output"), x / 2)
    with pytest.raises(InferenceServerException, match="FP16 has no JSON form") as refused:
        client.infer("half", [tensor("x", x, "FP16", binary=False)])
    assert refused.value.status() == "400"
    with pytest.raises(InferenceServerException, match="no JSON form"):
        client.infer("half", [tensor("x", x, "FP16")], outputs=[wanted("output", binary=False)])


EVERY = {"u8": ("UINT8", np.uint8), "u16": ("UINT16", np.uint16), "u32": ("UINT32", np.uint32),
         "u64": ("UINT64", np.uint64), "i8": ("INT8", np.int8), "i16": ("INT16", np.int16),
         "i32": ("INT32", np.int32), "i64": ("INT64", np.int64), "f32": ("FP32", np.float32),
         "f64": ("FP64", np.float64)}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype(client, binary):
    inputs = [tensor(name, np.array([1, 2], dtype=dtype), datatype, binary) for name, (datatype, dtype) in
              EVERY.items() if name != "u64"]
    inputs.append(tensor("u64", np.array([2**63 + 5], dtype=np.uint64), "UINT64", binary))
    inputs.append(tensor("b", np.array([True, True, False]), "BOOL", binary))
    inputs.append(tensor("s", np.array([b"four"], dtype=object), "BYTES", binary))
    result = client.infer("every", inputs)
    assert result.as_numpy("label").tolist() == [(2**63 + 5) % 1000 + 2 + 4]  # u64 arrived whole
    assert result.as_numpy("scores").tolist() == [9 * 3.0]


def test_records_become_one_output_per_field_and_only_those_asked_for_come_back(client):
    x = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]], dtype=np.float32)
    result = client.infer("score", [tensor("x", x, "FP32")], request_id="my-42")
    assert result.as_numpy("label").tolist() == [1, 0]
    np.testing.assert_allclose(result.as_numpy("scores"), x, rtol=1e-6)
    assert result.get_response()["id"] == "my-42"
    only = client.infer("score", [tensor("x", x, "FP32")], outputs=[wanted("label")])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["label"]


def test_requests_of_several_rows_are_merged_and_each_gets_its_own(server):
    def call(i):
        with httpclient.InferenceServerClient(url=server.url.removeprefix("http://")) as c:
            x = np.full((1 + i % 4, 4), float(i), dtype=np.float32)
            return i, c.infer("scale", [tensor("x", x, "FP32")]).as_numpy("output")

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(36)))
    for i, output in answers:
        assert output.shape == (1 + i % 4, 4) and (output == 2.0 * i).all()
    batches = server.get("stats").body["scale"]["batch_requests"]
    assert max(int(k) for k in batches) > 1, batches


ERRORS = [
    ("unknown model", lambda c: c.infer("nope", [tensor("x", np.zeros(4, np.float32), "FP32")]),
     "404", "unknown model 'nope'"),
    ("unknown version", lambda c: c.infer("scale", [tensor("x", np.zeros((1, 4), np.float32), "FP32")],
                                          model_version="7"), "404", "no version '7'"),
    ("unknown input", lambda c: c.infer("scale", [tensor("y", np.zeros((1, 4), np.float32), "FP32")]),
     "400", "unknown input 'y'"),
    ("wrong datatype", lambda c: c.infer("scale", [tensor("x", np.zeros((1, 4), np.float64), "FP64")]),
     "400", "datatype 'FP64' is wrong: the model takes FP32"),
    ("wrong shape", lambda c: c.infer("scale", [tensor("x", np.zeros((1, 5), np.float32), "FP32")]),
     "400", "does not match the model's [-1, 4]"),
    ("too many rows", lambda c: c.infer("scale", [tensor("x", np.zeros((9, 4), np.float32), "FP32")]),
     "400", "1..8 rows"),
    ("no tensor form", lambda c: c.get_model_metadata("opaque"), "404", "not served over the v2 protocol"),
    ("the model fails", lambda c: c.infer("fail", [tensor("x", np.zeros(2, np.float32), "FP32")]),
     "500", "RuntimeError: this model always fails"),
]


@pytest.mark.parametrize("call, status, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_reach_the_client_with_the_servers_message(client, call, status, message):
    with pytest.raises(InferenceServerException) as failed:
        call(client)
    assert failed.value.status() == status and message in failed.value.message()
    x = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(client.infer("scale", [tensor("x", x, "FP32")]).as_numpy("output"), x * 2)


def post(server, path, header, binary=b"", header_length=None):
    head = json.dumps(header).encode()
    # urllib would call the body a form, which inference routes refuse (415): say what it is, as clients do.
    headers = {"Inference-Header-Content-Length": str(len(head) if header_length is None else header_length),
               "Content-Type": "application/octet-stream"}
    request = urllib.request.Request(server.url + path, data=head + binary, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as failed:
        return failed.code, json.loads(failed.read())


def x_input(shape, **parameters):
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "parameters": parameters}]}


X = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}
MALFORMED = [
    (x_input([1, 4], binary_data_size=64), b"\0" * 16, None, "runs past the end of the body"),
    (x_input([1, 4], binary_data_size=-4), b"", None, "binary_data_size -4 is invalid"),
    (x_input([1, 4], binary_data_size=16), b"\0" * 16, 10**6, "does not fit a body"),
    (x_input([2**62, 4], binary_data_size=16), b"\0" * 16, None, "needs"),  # a product far past any body
    (x_input([1, 4], binary_data_size=8), b"\0" * 8, None, "needs 16 bytes"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}, b"", None,
     "holds 4 element(s), 'data' 3"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, "x", 4]}]}, b"", None,
     "must be numbers"),
    ({"inputs": []}, b"", None, "missing input(s) ['x']"),
    ({"inputs": [{**X, "parameters": [1]}]}, b"", None, "input 'x': 'parameters' must be an object, not a list"),
    ({"inputs": [X], "outputs": [{"name": "output", "parameters": "bin"}]}, b"", None,
     "output 'output': 'parameters' must be an object, not a string"),
    ({"inputs": [X], "parameters": 7}, b"", None, "the request: 'parameters' must be an object, not a number"),
]


@pytest.mark.parametrize("header, binary, length, says", MALFORMED)
def test_malformed_requests_are_400_and_the_next_good_one_succeeds(server, header, binary, length, says):
    status, body = post(server, "/v2/models/scale/infer", header, binary, length)
    assert status == 400 and says in body["error"], body
    status, raw = post(server, "/v2/models/scale/infer", {"inputs": [X]})
    assert status == 200 and json.loads(raw)["outputs"][0]["data"] == [2, 4, 6, 8]


def test_the_decode_helper_refuses_what_the_loop_refuses_in_the_same_words(server, tmp_path):
    """Headers parsed in the helper process (`--off-loop-decode-size`) get the loop's answers, not a 503."""
    with serve("tensors:Tensors", "--off-loop-decode-size", "10", log_dir=tmp_path) as helped:
        for header, binary, length, _ in MALFORMED:
            (status, body), (its_status, its_body) = (post(s, "/v2/models/scale/infer", header, binary, length)
                                                      for s in (helped, server))
            assert (status, body["error"]) == (its_status, its_body["error"])
        status, raw = post(helped, "/v2/models/scale/infer", {"inputs": [X]})
        assert status == 200 and json.loads(raw)["outputs"][0]["data"] == [2, 4, 6, 8]


def test_the_asyncio_client(server):
    async def calls():
        async with aioclient.InferenceServerClient(url=server.url.removeprefix("http://")) as c:
            live, ready = await c.is_server_live(), await c.is_model_ready("scale")
            given = aioclient.InferInput("x", [2, 4], "FP32")
            given.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
            results = await asyncio.gather(*(c.infer("scale", [given]) for _ in range(6)))
            return live, ready, [r.as_numpy("output") for r in results]

    live, ready, outputs = asyncio.run(calls())
    assert live and ready and all((o == 2).all() and o.shape == (2, 4) for o in outputs)


def test_a_models_infer_path_answers_as_its_versioned_one_and_says_which_method_it_takes(server):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    plain = server.post("v2/models/scale/infer", body)
    versioned = server.post("v2/models/scale/versions/1/infer", body)
    assert plain.status == versioned.status == 200
    assert plain.body["outputs"] == versioned.body["outputs"]
    wrong = server.get("v2/models/scale/infer")
    assert wrong.status == 405 and wrong.headers["Allow"] == "POST"
    unknown = server.post("v2/models/nope/infer", body)
    assert unknown.status == 404 and "unknown model 'nope'" in unknown.body["error"]


def test_not_ready_is_503_with_a_json_error(tmp_path):
    with serve("basics:SlowStart", log_dir=tmp_path, wait_ready=False) as starting:
        with httpclient.InferenceServerClient(url=starting.url.removeprefix("http://")) as c:
            assert c.is_server_live() and not c.is_server_ready()
        reply = starting.get("v2/health/ready")
        assert reply.status == 503 and "not ready" in reply.body["error"]


@pytest.mark.parametrize("content_type, status", [
    ("application/octet-stream", 200), ("application/json", 200), (None, 200),  # tritonclient sends none
    ("text/plain", 415), ("application/x-www-form-urlencoded", 415),  # what any web page may post anywhere
])
def test_inference_takes_binary_and_json_bodies_and_refuses_forms_and_text(server, content_type, status):
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    try:  # http.client sends no Content-Type unless told, as tritonclient
        connection.request("POST", "/v2/models/scale/infer", body=body,
                           headers={} if content_type is None else {"Content-Type": content_type})
        assert connection.getresponse().status == status
    finally:
        connection.close()


def test_answers_framed_in_a_worker_process_reach_the_client_each_in_its_own_form(tmp_path):
    """The answer is framed beside the model: in a worker process, requests of one batch that ask for
    different forms (binary, JSON, their own id) each get theirs."""
    with serve("tensors:Tensors", "--isolation", "process", "--no-access-log", log_dir=tmp_path) as worker:
        def call(i):
            binary = i % 2 == 0
            with httpclient.InferenceServerClient(url=worker.url.removeprefix("http://")) as c:
                x = np.full((1 + i % 3, 4), float(i), dtype=np.float32)
                result = c.infer("scale", [tensor("x", x, "FP32", binary)], outputs=[wanted("output", binary)],
                                 request_id=f"r{i}" if i % 3 == 0 else "")
                return i, x, binary, result

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(call, range(24)))
        with httpclient.InferenceServerClient(url=worker.url.removeprefix("http://")) as c:  # arrays, not framed
            flags = np.arange(200_000) % 5 == 0
            large = c.infer("negate", [tensor("flags", flags, "BOOL")], outputs=[wanted("output")])
        np.testing.assert_array_equal(large.as_numpy("output"), ~flags)
    for i, x, binary, result in answers:
        np.testing.assert_array_equal(result.as_numpy("output"), x * 2)
        assert (result.get_output("output").get("parameters") is not None) == binary
        assert result.get_response().get("id") == (f"r{i}" if i % 3 == 0 else None)


@pytest.mark.parametrize("length", [0, 3, 300_000], ids=["empty", "small", "large"])
def test_binary_outputs_of_any_size_arrive_whole(client, length):
    """Small binary answers go out as one buffer, large ones header first and then the tensor's own buffer."""
    flags = np.arange(length) % 3 == 0
    result = client.infer("negate", [tensor("flags", flags, "BOOL")], outputs=[wanted("output")])
    np.testing.assert_array_equal(result.as_numpy("output"), ~flags)
    x = np.linspace(-2, 2, length, dtype=np.float16)
    np.testing.assert_array_equal(client.infer("half", [tensor("x", x, "FP16")]).as_numpy("output"), x / 2)


def test_a_header_sent_again_is_read_again_for_its_tensors(server):
    """A header of binary inputs is checked once and its plan kept: each request's own bytes are still read,
    BYTES elements and text still checked, and a body of another size checked again."""
    as_json = [{"name": "output", "parameters": {"binary_data": False}}]
    header = {**x_input([2, 4], binary_data_size=32), "outputs": as_json}
    for scale in (1, 3, 5):
        x = np.arange(8, dtype=np.float32).reshape(2, 4) * scale
        status, raw = post(server, "/v2/models/scale/infer", header, x.tobytes())
        assert status == 200 and json.loads(raw)["outputs"][0]["data"] == (x * 2).ravel().tolist()
    status, body = post(server, "/v2/models/scale/infer", header, b"\0" * 16)
    assert status == 400 and "runs past the end of the body" in body["error"]

    def shout(*elements):
        data = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
        text = {"name": "text", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(data)}}
        return post(server, "/v2/models/shout/infer", {"inputs": [text], "outputs": as_json}, data)

    status, raw = shout(b"ab", b"cd")
    assert status == 200 and json.loads(raw)["outputs"][0]["data"] == ["AB!", "CD!"]
    status, body = shout(b"\xff\xfe", b"cd")  # the same header: the elements are read again
    assert status == 400 and "not UTF-8" in body["error"], body
    status, body = shout(b"abc", b"d")  # the same sizes in all, elements cut elsewhere
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == ["ABC!", "D!"]
