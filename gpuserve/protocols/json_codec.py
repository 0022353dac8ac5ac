"""The native protocol's JSON: request bodies to API arguments, results to bytes.

`encode_json` is the encoder the native routes hand the batcher with each
request; it runs beside the model, in the replica's thread or process, so this
module imports nothing but orjson and the declarations (never aiohttp).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson

from gpuserve.errors import GpuserveError
from gpuserve.service import ApiSpec

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class BadRequest(GpuserveError):
    """The request cannot be turned into an API call (the protocol answers 400)."""


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


class _ModuleEncoder(functools.partial):  # type: ignore[type-arg]
    """A partial that pickles as a reference to `encode_json`, the name it is bound to below.

    Pickled field by field, its keyword names would arrive as new strings, and
    orjson recognises keyword names by identity (it then rejects them).
    """

    def __reduce__(self) -> str:
        return "encode_json"


# A partial of the C function: encoding a batch with `map` runs no Python frame per item.
encode_json: Callable[[Any], bytes] = _ModuleEncoder(orjson.dumps, default=_fallback, option=_OPTIONS)
