"""`GET /openapi.json`: an OpenAPI 3.1 document built from the declarations; `GET /docs`: a page to read and try it.

Each API's request and response schemas come from its annotations (through
pydantic, as the door checks them: `gpuserve.signature`), with every error it
may answer and the health, stats and metrics routes beside them. `/docs` is
Swagger UI from the installed `openapi-ui-bundles` package: it needs no network.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from openapi_ui_bundles.swagger_ui import static_path

import gpuserve
from gpuserve.protocols.native import TIMEOUT_HEADER
from gpuserve.protocols.request_ids import HEADER
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
        "reason": {"type": "string", "enum": ["queue_full", "latency", "deadline", "executor_lost", "shutting_down"]},
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
    "500": "The API's code raised; `type` names the exception",
    "503": "Not ready, queue full, cannot meet max_latency_ms, too many connections, executor lost or shutting "
           "down: retry after Retry-After seconds",
    "504": "The request's deadline passed (--timeout, or its X-Request-Timeout header)",
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


def _operation(api: ApiSpec, method: Any, components: dict[str, Any]) -> dict[str, Any]:
    signature = api.signature
    doc = inspect.getdoc(method) or ""
    rows = (f" A batchable API: each parameter carries 1..{api.max_batch_size} rows (the same number for every "
            "parameter), and the answer holds one result per row.") if api.batchable else ""
    responses: dict[str, Any] = {
        "200": {"description": "The API's result" + (", one per row" if api.batchable else ""),
                "content": _json(_lift(signature.response_schema(), components))},
    }
    responses.update({status: _error(text, retry=status == "503") for status, text in _ERRORS.items()})
    return {
        "operationId": api.name,
        "summary": doc.splitlines()[0] if doc else f"Call {api.method_name}",
        # The deadline header is operational, not part of the call: described, not listed as a parameter.
        "description": (doc + rows + f" A `{TIMEOUT_HEADER}: <seconds>` header gives the request a deadline of "
                        "its own (504 when it passes).").strip(),
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
    paths["/readyz"] = _get("Every replica is built and serving", status,
                            **{"503": _error("Not ready yet, or failed: `error` says why", retry=True)})
    paths["/stats"] = _get("Serving signals per API: queues, batches in rows and requests, refusals, outcomes",
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

    app.router.add_get("/openapi.json", openapi)
    page = _PAGE.format(title=f"{state.deployment.spec.name} — gpuserve")

    async def docs(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app.router.add_get("/docs", docs)
    app.router.add_static("/docs/assets", static_path)
