"""The KServe v2 / Open Inference Protocol over HTTP, with Triton's binary tensor and model configuration
extensions: `tritonclient` (and any v2 client) works unchanged.

Every API of the service is a v2 model named after it, with one version, "1"
(`v2_model.py` reads its tensors from the declarations). An inference request
is parsed (`v2_request.py`), its arguments go through the same batcher as the
native route's (a request of shape [n, ...] to a batchable API is n rows,
merged with other requests' rows; a JSON header of `--off-loop-decode-size`
bytes or more is parsed in the helper process of `offload.py`, off the event
loop), and its outputs are encoded and framed
beside the model, in the replica's thread or process (`v2_model.Answer`): as
JSON, or as binary data after the JSON header when asked (`binary_data`,
`binary_data_output`), written from the arrays' own buffers. The event loop
only writes the bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

import gpuserve
from gpuserve.batching import ItemFailed, Refused
from gpuserve.protocols.errors import json_error, refusal
from gpuserve.protocols.guards import GUARDS, BodyRefused, Guards, add_route, json_content, read_body
from gpuserve.protocols.json_codec import BadRequest
from gpuserve.protocols.native import (
    TIMEOUT_HEADER,
    body_refused,
    closing,
    failed,
    not_ready,
    offload_failed,
    parse_timeout,
    refused,
    taking,
)
from gpuserve.protocols.offload import DecodeWorker, OffloadFailed
from gpuserve.protocols.request_ids import request_id
from gpuserve.protocols.v2_model import Answer, NotATensor, Outputs, V2Model, octets, v2_model
from gpuserve.protocols.v2_request import Requested, V2BadRequest, header_length, parse

if TYPE_CHECKING:
    from gpuserve.state import ServerState

HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
SHARED_ANSWERS = 256  # encoders kept per server for requests that ask the same outputs in the same forms
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _config(model: V2Model) -> dict[str, Any]:
    """Triton's model configuration: dims leave out the batch dimension when the model batches."""
    api = model.api
    skip = 1 if api.batchable else 0

    def tensors(items: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": _triton_type(t.datatype), "dims": list(t.shape[skip:]) or [1]}
                for t in items]

    config: dict[str, Any] = {
        "name": model.name, "platform": "gpuserve", "backend": "gpuserve",
        "max_batch_size": api.max_batch_size if api.batchable else 0,
        "input": tensors(model.inputs), "output": tensors(model.outputs),
    }
    if api.batchable:  # gpuserve batches whenever a device is free: no delay to wait out
        config["dynamic_batching"] = {"max_queue_delay_microseconds": 0}
    return config


def _metadata(model: V2Model) -> dict[str, Any]:
    return {"name": model.name, "versions": [VERSION], "platform": "gpuserve",
            "inputs": [t.describe() for t in model.inputs], "outputs": [t.describe() for t in model.outputs]}


def _v2_content(request: web.BaseRequest) -> str | None:
    """Why an inference request's body is refused (415), or None: JSON, binary data, or no `Content-Type`."""
    if request.headers.get("Content-Type", "").partition(";")[0].strip().lower() == "application/octet-stream":
        return None
    return json_content(request)


def add_v2_routes(app: web.Application, state: ServerState, offload: DecodeWorker | None = None) -> None:
    """The v2 routes; `offload` parses requests whose JSON header is `--off-loop-decode-size` bytes or more."""
    models: dict[str, V2Model] = {}
    unavailable: dict[str, str] = {}  # API name -> why it has no v2 form
    for api in state.deployment.spec.apis.values():
        try:
            models[api.name] = v2_model(api)
        except NotATensor as exc:
            unavailable[api.name] = str(exc)
    outputs = {name: Outputs(m.outputs, m.columns, m.api.batchable) for name, m in models.items()}

    @functools.lru_cache(maxsize=SHARED_ANSWERS)
    def shared_answer(name: str, requested: tuple[tuple[str, bool], ...]) -> Answer:
        return Answer(outputs[name], name, VERSION, requested)

    def answer_for(model: V2Model, requested: Requested, request_id: str | None) -> Answer:
        """The encoder of one request; one object for every request that asks the same (and no `id`)."""
        pairs = tuple((name, requested.binary[name]) for name in requested.names)
        if request_id is None:
            return shared_answer(model.name, pairs)
        return Answer(outputs[model.name], model.name, VERSION, pairs, request_id)

    batcher = state.batcher
    settings = state.deployment.settings
    guards = app.get(GUARDS) or Guards()
    off_loop = settings.off_loop_decode_size if offload is not None else 0

    def model_of(request: web.Request) -> V2Model | web.Response:
        name = request.match_info["model"]
        rid = request_id(request)
        version = request.match_info.get("version")
        if name in unavailable:
            return json_error(404, f"model {name!r} is not served over the v2 protocol: {unavailable[name]}", rid)
        if name not in models:
            return json_error(404, f"unknown model {name!r}", rid)
        if version is not None and version != VERSION:
            return json_error(404, f"model {name!r} has no version {version!r}; versions: [{VERSION!r}]", rid)
        return models[name]

    def unready(request: web.Request) -> web.Response | None:
        """For the ready routes: None while some replica can take work (as `/readyz`)."""
        return None if state.ready else not_ready(state, guards, request_id(request))

    async def server_metadata(_: web.Request) -> web.Response:
        return web.json_response({"name": "gpuserve", "version": gpuserve.__version__, "extensions": EXTENSIONS})

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        return unready(request) or web.json_response({"ready": True})

    async def metadata(request: web.Request) -> web.Response:
        found = model_of(request)
        return found if isinstance(found, web.Response) else web.json_response(_metadata(found))

    async def config(request: web.Request) -> web.Response:
        found = model_of(request)
        return found if isinstance(found, web.Response) else web.json_response(_config(found))

    async def model_ready(request: web.Request) -> web.Response:
        found = model_of(request)
        if isinstance(found, web.Response):
            return found
        return unready(request) or web.json_response({"name": found.name, "ready": True})

    async def infer(request: web.Request) -> web.Response:
        found = model_of(request)
        return found if isinstance(found, web.Response) else await infer_on(found, request)

    async def infer_on(found: V2Model, request: web.Request) -> web.Response:
        rid = request_id(request)
        not_taken = taking(state, guards, request, rid, _v2_content)
        if not_taken is not None:
            return not_taken
        try:
            own = request.headers.get(TIMEOUT_HEADER)
            timeout = None if own is None else parse_timeout(own, settings.request_timeout_cap)
            probe = batcher.admit(found.name)  # before the body is read: a refusal reads nothing
            body = await read_body(request, settings.max_body_size, settings.body_timeout)
            head = header_length(request.headers.get(HEADER_LENGTH), len(body))
            if off_loop and head >= off_loop:  # binary tensors cost the loop nothing per element: JSON does
                parsed = await offload.parse_v2(found.name, body, head)  # type: ignore[union-attr]
            else:
                parsed = parse(found, body, head)
            del body
            encoder = answer_for(found, parsed.requested, parsed.request_id)
            future = batcher.submit(found.name, parsed.kwargs, encoder, timeout, parsed.rows, rid, probe=probe)
        except (V2BadRequest, BadRequest) as exc:
            return closing(state, json_error(400, str(exc), rid))
        except Refused as exc:
            return closing(state, refused(request, exc, rid, found.name))
        except BodyRefused as exc:
            return body_refused(exc, rid)
        except OffloadFailed as exc:
            return offload_failed(state, exc, rid)
        try:
            answer = await future  # encoded beside the model
        except ItemFailed as exc:
            return closing(state, failed(found.name, rid, exc, guards))
        except Refused as exc:
            return closing(state, refusal(exc, rid))
        if type(answer) is bytes:
            return closing(state, web.Response(body=answer, content_type="application/json",
                                               headers={"X-Request-ID": rid}))
        body, rest = answer
        if type(rest) is int:  # framed whole beside the model
            head_length = rest
        else:  # large binary outputs: joined here, in one buffer of the loop's thread
            head_length, body = len(body), b"".join((body, *map(octets, rest)))
        headers = {"X-Request-ID": rid, HEADER_LENGTH: str(head_length)}
        return closing(state, web.Response(body=body, content_type="application/octet-stream", headers=headers))

    add_route(app, "GET", "/v2", server_metadata)
    add_route(app, "GET", "/v2/", server_metadata)
    add_route(app, "GET", "/v2/health/live", live)
    add_route(app, "GET", "/v2/health/ready", ready)
    for name, model in models.items():
        # Each served model's infer path, plainly: aiohttp finds a plain path with one lookup, where the
        # pattern below is reached only after the others are tried (2.1 us against 0.8 us a request).
        add_route(app, "POST", f"/v2/models/{name}/infer", functools.partial(infer_on, model), names_requests=True)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        add_route(app, "GET", prefix, metadata)
        add_route(app, "GET", f"{prefix}/ready", model_ready)
        add_route(app, "GET", f"{prefix}/config", config)
        add_route(app, "POST", f"{prefix}/infer", infer, names_requests=True)

