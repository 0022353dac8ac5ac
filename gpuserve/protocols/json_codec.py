"""JSON in, JSON out: request bodies to API arguments and results to bytes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson

from gpuserve.errors import GpuserveError
from gpuserve.service import ApiSpec

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class BadRequest(GpuserveError):
    """The request cannot be turned into an API call (HTTP 400)."""


def argument_decoder(api: ApiSpec) -> Callable[[bytes], dict[str, Any]]:
    """Request bodies of one API to its keyword arguments.

    Built once per route, a closure over ready key sets: a well-formed body
    costs one `orjson.loads` and two set comparisons.
    """
    params = frozenset(api.params)
    required = api.required
    loads = orjson.loads

    def decode(body: bytes) -> dict[str, Any]:
        try:
            payload = loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if type(payload) is dict and params.issuperset(payload) and payload.keys() >= required:
            return payload
        raise _rejection(api, payload)

    return decode


def _rejection(api: ApiSpec, payload: Any) -> BadRequest:
    if not isinstance(payload, dict):
        return BadRequest(
            f"expected a JSON object of {api.name!r}'s parameters {list(api.params)}, "
            f"got {type(payload).__name__}"
        )
    unknown = payload.keys() - set(api.params)
    if unknown:
        return BadRequest(f"unknown parameter(s) {sorted(unknown)} for {api.name!r}; it takes {list(api.params)}")
    return BadRequest(f"missing parameter(s) {sorted(api.required - payload.keys())} for {api.name!r}")


def _fallback(obj: Any) -> Any:
    # Tensors and arrays of any framework expose tolist(); the core names none of them.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


# A partial of the C function: encoding a batch with `map` runs no Python frame per item.
encode: Callable[[Any], bytes] = functools.partial(orjson.dumps, default=_fallback, option=_OPTIONS)
