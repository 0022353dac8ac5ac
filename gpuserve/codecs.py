"""JSON in, JSON out: request bodies to API arguments and results to bytes."""

from __future__ import annotations

from typing import Any

import orjson

from gpuserve.errors import GpuserveError
from gpuserve.service import ApiSpec

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class BadRequest(GpuserveError):
    """The request cannot be turned into an API call (HTTP 400)."""


def decode_arguments(api: ApiSpec, body: bytes) -> dict[str, Any]:
    """Parse a JSON object and check its keys against the API's parameters."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest(
            f"expected a JSON object of {api.name!r}'s parameters {list(api.params)}, "
            f"got {type(payload).__name__}"
        )
    unknown = payload.keys() - set(api.params)
    if unknown:
        raise BadRequest(
            f"unknown parameter(s) {sorted(unknown)} for {api.name!r}; it takes {list(api.params)}"
        )
    missing = api.required - payload.keys()
    if missing:
        raise BadRequest(f"missing parameter(s) {sorted(missing)} for {api.name!r}")
    return payload


def _fallback(obj: Any) -> Any:
    # Tensors and arrays of any framework expose tolist(); the core names none of them.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=_OPTIONS)
