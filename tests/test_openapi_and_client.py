"""The OpenAPI page and the client, against live servers: the document is valid, the docs page needs
no network, a property-based run finds nothing wrong, and the client calls APIs as methods."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from gpuserve.client import AsyncClient, BadRequestError, Client, DeadlineError, ServerError, UnavailableError
from serving import ROOT, serve

EXAMPLE = ROOT / "examples" / "classifier"
ROW = [0.5, -1.2, 3.3, 0.0, 2.1, -0.7, 1.5, 0.9]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    with serve("app:Classifier", "--no-access-log", cwd=EXAMPLE, log_dir=tmp_path_factory.mktemp("ex")) as s:
        yield s


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("typed-client")
    with serve("typed:Typed", env={"TYPED_APPS_DIR": str(directory)}, log_dir=directory) as server:
        yield server


@pytest.mark.parametrize("which", ["example", "typed"])
def test_the_document_is_valid_openapi_3_1_built_from_the_declarations(request, which):
    server = request.getfixturevalue(which)
    document = server.get("openapi.json").body
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert {"/livez", "/readyz", "/stats", "/metrics"} <= set(document["paths"])
    if which == "example":
        body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        x = body["properties"]["x"]
        assert (x["minItems"], x["maxItems"]) == (1, 64)  # rows per request
        assert x["items"]["minItems"] == x["items"]["maxItems"] == 8 and x["items"]["items"]["type"] == "number"
        answer = document["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
        assert answer["schema"]["items"] == {"$ref": "#/components/schemas/Prediction"}
        assert set(document["components"]["schemas"]["Prediction"]["properties"]) == {"label", "probabilities"}
    else:
        responses = document["paths"]["/add"]["post"]["responses"]
        assert {"200", "400", "413", "500", "503", "504"} <= set(responses)
        assert "Point" in document["components"]["schemas"]


def test_the_docs_page_needs_no_network(example):
    with urllib.request.urlopen(f"{example.url}/docs", timeout=10) as page:
        html = page.read().decode()
    assert not re.search(r"(src|href)=\"https?://", html), "the page must not load anything from elsewhere"
    assets = re.findall(r"(?:src|href)=\"(/docs/assets/[^\"]+)\"", html)
    assert "/docs/assets/swagger-ui-bundle.js" in assets
    for asset in assets:
        with urllib.request.urlopen(f"{example.url}{asset}", timeout=10) as answer:
            assert answer.status == 200 and len(answer.read()) > 100


def test_a_property_based_run_finds_no_server_error_and_no_answer_off_the_schema(example, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [str(schemathesis), "run", f"{example.url}/openapi.json", "--checks", "all", "--max-time", "30",
         "--seed", "7", "--workers", "1", "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "No issues found" in done.stdout


def test_the_client_calls_apis_as_methods(example, typed):
    with Client(example.url) as client:
        [prediction] = client.predict(x=[ROW])
        assert set(prediction) == {"label", "probabilities"}
        assert client.ready()
    client = Client(typed.url)
    assert client.add(a=2, b=40) == 42
    assert client.mirror(p={"x": 1, "y": 2}) == {"x": 2.0, "y": 1.0, "label": "a"}
    assert client.call("lengths", {"sentences": ["ab", "c"]}, request_id="mine-1") == [2, 1]


def test_the_client_raises_typed_errors(typed, tmp_path):
    client = Client(typed.url)
    with pytest.raises(BadRequestError) as bad:
        client.add(a="two", b=1)
    assert bad.value.status == 400 and "'a'" in bad.value.message and bad.value.request_id
    with pytest.raises(ServerError) as failed:
        client.boom(tag="client")
    assert failed.value.status == 500 and failed.value.body["type"] == "ValueError"
    with pytest.raises(DeadlineError):
        client.call("wait", {"seconds": 60, "tag": "client-deadline"}, timeout=0.3)
    with pytest.raises(BadRequestError) as missing:
        client.no_such_api()
    assert missing.value.status == 404
    with serve("basics:SlowStart", log_dir=tmp_path, wait_ready=False) as starting:
        with pytest.raises(UnavailableError) as unavailable:
            Client(starting.url).ping()
    assert unavailable.value.status == 503 and unavailable.value.retry_after == 1


def test_the_async_client(typed):
    async def calls():
        async with AsyncClient(typed.url) as client:
            answers = await asyncio.gather(*(client.add(a=i, b=i) for i in range(8)))
            with pytest.raises(BadRequestError):
                await client.add(a=1)
            return answers, await client.ready()

    answers, ready = asyncio.run(calls())
    assert answers == [2 * i for i in range(8)] and ready
