"""The `kserve` package's own client (InferenceRESTClient, protocol "v2") against gpuserve.

It needs the kserve package, which is large (about 70 distributions): the core
test env skips this file; tox env `kserve-client` installs kserve and runs it.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

kserve = pytest.importorskip("kserve")

from serving import serve  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve("tensors:Tensors", "--no-access-log", log_dir=tmp_path_factory.mktemp("kserve")) as s:
        yield s


def test_inference_rest_client_v2(server):
    async def calls():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
        try:
            live = await client.is_server_live(server.url)
            ready = await client.is_model_ready(server.url, "scale")
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            results = []
            for binary in (False, True):
                given = kserve.InferInput("x", list(x.shape), "FP32")
                given.set_data_from_numpy(x, binary_data=binary)
                request = kserve.InferRequest(model_name="scale", infer_inputs=[given], request_id=f"k-{binary}")
                results.append(await client.infer(server.url, request, model_name="scale"))
            return live, ready, x, results
        finally:
            await client.close()

    live, ready, x, results = asyncio.run(calls())
    assert live and ready
    for result in results:
        np.testing.assert_array_equal(result.outputs[0].as_numpy(), x * 2)
