"""The streaming example, served for real, streams exactly what its model makes in-process, batched or not."""

import concurrent.futures
import importlib.util
import json
import re

import pytest

from gpuserve.testing.batching_client import wait_until
from serving import ROOT, serve
from stream_client import DONE, Stream

torch = pytest.importorskip("torch")
EXAMPLE = ROOT / "examples" / "textgen"
# Under a name of its own: the other examples have a model.py too.
_spec = importlib.util.spec_from_file_location("textgen_model", EXAMPLE / "model.py")
textgen_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(textgen_model)
build_model, complete = textgen_model.build_model, textgen_model.complete


@pytest.fixture(scope="module")
def textgen(tmp_path_factory):
    with serve("app:TextGenerator", cwd=EXAMPLE, log_dir=tmp_path_factory.mktemp("textgen")) as server:
        yield server


@pytest.fixture(scope="module")
def model():
    return build_model()


def streamed(server, body, **kw):
    with Stream(server, "generate", body, **kw) as stream:
        assert stream.status == 200
        events = [event.data for event in stream.events()]
    assert events[-1] == DONE
    return "".join(events[:-1])


def test_the_model_is_made_here_and_is_the_same_every_time(model):
    again = build_model()
    assert torch.equal(model.table.weight, again.table.weight)
    assert complete(model, "The keeper", 60, seed=3) == complete(again, "The keeper", 60, seed=3)
    assert complete(model, "The keeper", 60, seed=3) != complete(model, "The keeper", 60, seed=4)


def test_a_stream_is_the_text_the_model_makes(textgen, model):
    body = {"prompt": ["The keeper"], "length": [120], "seed": [7], "temperature": [0.5]}
    assert streamed(textgen, body) == complete(model, "The keeper", 120, seed=7, temperature=0.5)
    with Stream(textgen, "generate", {"prompt": ["a"], "length": [5]}, accept="application/x-ndjson") as stream:
        assert "".join(stream.lines()) == complete(model, "a", 5)


def test_requests_that_wait_together_stream_as_one_batch_each_its_own_text(textgen, model):
    # A long stream (100 000 characters: seconds of work) holds the executor while the others queue behind it.
    long_one = Stream(textgen, "generate", {"prompt": ["hold"], "length": [100_000]})
    assert long_one.values(1)
    prompts = [f"the {word}" for word in ("sea", "boat", "storm", "light", "town", "pier", "gull")]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        texts = [pool.submit(streamed, textgen, {"prompt": [p], "length": [40 + 10 * i], "seed": [i]}, timeout=60)
                 for i, p in enumerate(prompts)]
        wait_until(lambda: textgen.get("stats").body["generate"]["queue_depth"] == len(prompts), "all are queued")
        long_one.close()  # its client leaves: its generator is closed, the executor free for the seven
        assert [t.result(timeout=60) for t in texts] == [complete(model, p, 40 + 10 * i, seed=i)
                                                         for i, p in enumerate(prompts)]
    assert textgen.get("stats").body["generate"]["batch_requests"].get(str(len(prompts))) == 1


def test_a_request_is_one_stream(textgen):
    reply = textgen.post("generate", {"prompt": ["a", "b"]})
    assert reply.status == 400 and "each request of a streaming API is one stream" in reply.body["error"]


def test_the_readme_shows_what_the_server_streams(textgen):
    readme = (EXAMPLE / "README.md").read_text()
    shell = r"\$ (curl -N localhost:3000/generate -H 'Content-Type: application/json' -d '(.*?)')\n(.*?)\n```"
    body, shown = re.search(shell, readme, re.S).group(2, 3)
    with Stream(textgen, "generate", json.loads(body)) as stream:
        sent = stream.response.read().decode()
    assert sent.strip() == shown.strip()


@pytest.mark.gpu
def test_on_a_gpu_the_stream_is_what_the_cpu_computes(textgen, model):
    assert "Serving on the CPU" not in textgen.log()  # the model and its sampling run on cuda:0
    body = {"prompt": ["The keeper"], "length": [300], "seed": [5], "temperature": [0.7]}
    assert streamed(textgen, body) == complete(model, "The keeper", 300, seed=5, temperature=0.7)
