"""`GET /openapi.json`: an OpenAPI 3.1 document built from the declarations; `GET /docs`: a page to read and try it.

Each API's request and response schemas come from its annotations (through
pydantic, as the door checks them: `gpuserve.signature`), with every error it
may answer and the health, stats and metrics routes beside them. `/docs` is
Swagger UI from the installed `openapi-ui-bundles` package: it needs no network.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from openapi_ui_bundles.swagger_ui import static_path

import gpuserve
from gpuserve.batching import Reason
from gpuserve.protocols.errors import STATUS, json_error
from gpuserve.protocols.guards import add_route
from gpuserve.protocols.native import TIMEOUT_HEADER
from gpuserve.protocols.request_ids import HEADER, request_id
from gpuserve.protocols.streaming import OFFERED as STREAM_MEDIA
from gpuserve.service import ApiSpec, ServiceSpec

if TYPE_CHECKING:
    from gpuserve.state import ServerState

ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error answer; `reason` says why a request was refused, `type` names the exception "
                   "a failing API raised, `errors` lists each invalid argument.",
    "properties": {
        "error": {"type": "string"},
        "request_id": {"type": "string"},
        "reason": {"type": "string", "enum": [r.value for r in STATUS if r is not Reason.CANCELLED]},
        "type": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "allowed": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["error"],
}
_ERRORS = {
    "400": "The body is not valid JSON, or its arguments do not match the API's declarations (each named), or "
           "X-Request-Timeout is not seconds up to the server's maximum",
    "401": "The server asks for an API key: send `Authorization: Bearer <key>`",
    "408": "The body took longer than the server allows (--body-timeout)",
    "413": "The body is larger than the server's limit (--max-body-size)",
    "415": "The body says it is not JSON (Content-Type); send application/json, or no Content-Type",
    "421": "The server does not answer for this Host (--allowed-hosts)",
    "422": "This input crashed the service's replicas twice before: it is refused without running",
    "500": "The API's code raised (`type` names the exception), or this request's input crashed its replica",
    "503": "Not ready, queue full, too many streams open, cannot meet max_latency_ms, too many connections, "
           "executor lost, failed or shutting down: retry after Retry-After seconds",
    "504": "The request's deadline passed (--timeout, or its X-Request-Timeout header), or the model's call "
           "ran past its limit (call_timeout) and was stopped",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json({"$ref": "#/components/schemas/Error"})}
    if retry:
        answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return answer


def _lift(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Move a pydantic schema's `$defs` into the document's shared schemas (its refs already point there)."""
    components.update(schema.pop("$defs", {}))
    return schema


def _stream(value: dict[str, Any]) -> dict[str, Any]:
    """A stream's answer: its body is text; `x-itemSchema` describes one value (OpenAPI 3.2's `itemSchema`)."""
    return {
        "description": "A stream, one value per Server-Sent Event (`data: <json>`; an error is an `event: error`, "
                       "and `data: [DONE]` ends it) or per NDJSON line, as `Accept` asks; each value as soon as the "
                       "API yields it",
        "content": {media: {"schema": {"type": "string"}, "x-itemSchema": value} for media in STREAM_MEDIA},
    }


def _operation(api: ApiSpec, method: Any, components: dict[str, Any]) -> dict[str, Any]:
    signature = api.signature
    doc = inspect.getdoc(method) or ""
    if api.streams:
        rows = (" A batchable stream: each parameter carries one row, and each value is that row's."
                if api.batchable else "")
    else:
        rows = (f" A batchable API: each parameter carries 1..{api.max_batch_size} rows (the same number for every "
                "parameter), and the answer holds one result per row.") if api.batchable else ""
    value = _lift(signature.response_schema(), components)
    responses: dict[str, Any] = {
        "200": _stream(value) if api.streams else {
            "description": "The API's result" + (", one per row" if api.batchable else ""), "content": _json(value)},
    }
    responses.update({status: _error(text, retry=status == "503") for status, text in _ERRORS.items()})
    if api.streams:
        responses["406"] = _error("`Accept` names neither text/event-stream nor application/x-ndjson")
    return {
        "operationId": api.name,
        "summary": doc.splitlines()[0] if doc else f"Call {api.method_name}",
        # The deadline header is operational, not part of the call: described, not listed as a parameter.
        "description": (doc + rows + f" A `{TIMEOUT_HEADER}: <seconds>` header gives the request a deadline of "
                        "its own (504 when it passes" + (" before the first value" if api.streams else "")
                        + ").").strip(),
        "requestBody": {"required": True, "content": _json(_lift(signature.request_schema(), components))},
        "responses": responses,
    }


def _get(summary: str, ok: dict[str, Any], content_type: str = "application/json",
         **others: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK", "content": {content_type: {
        "schema": ok}}}, **others}}}


def openapi_document(spec: ServiceSpec) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a service."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for api in spec.apis.values():
        method = getattr(spec.cls, api.method_name)
        paths[f"/{api.name}"] = {"post": _operation(api, method, components)}
    status = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    paths["/livez"] = _get("The process is up", status)
    paths["/readyz"] = _get("Some replica can take work now; `replicas` holds each one's state", status,
                            **{"503": _error("No replica can take work now (still building, being replaced, "
                                             "failed or shutting down): `error` says why", retry=True)})
    paths["/stats"] = _get("Serving signals per API (queues, batches in rows and requests, refusals, outcomes), "
                           "and under `replicas` each replica's state, restarts and abandoned threads",
                           {"type": "object"})
    paths["/metrics"] = _get("The same signals in the Prometheus text format", {"type": "string"}, "text/plain",
                             **{"501": _error("prometheus-client is not installed")})
    paths["/openapi.json"] = _get("This document", {"type": "object"})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": spec.name,
            "version": gpuserve.__version__,
            "description": f"{spec.name}, served by gpuserve {gpuserve.__version__}. Every answer carries an "
                           f"{HEADER} header (the client's, when it sends one).",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png"></head>
<body><div id="docs"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#docs", deepLinking: true}});</script>
</body></html>
"""


def add_openapi_routes(app: web.Application, state: ServerState) -> None:
    document = orjson.dumps(openapi_document(state.deployment.spec))

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    add_route(app, "GET", "/openapi.json", openapi)
    page = _PAGE.format(title=f"{state.deployment.spec.name} — gpuserve")

    async def docs(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    add_route(app, "GET", "/docs", docs)
    # The bundle's files by name (not a static route: those would need a middleware to be guarded).
    assets = {path.name: path for path in Path(static_path).iterdir() if path.is_file()}

    async def asset(request: web.Request) -> web.StreamResponse:
        found = assets.get(request.match_info["name"])
        if found is None:
            return json_error(404, f"no route {request.method} {request.path}", request_id(request))
        return web.FileResponse(found)

    add_route(app, "GET", "/docs/assets/{name}", asset)
