"""JSON in, JSON out: request bodies to API arguments and results to bytes."""

from __future__ import annotations

from typing import Any

import orjson

from gpuserve.errors import GpuserveError
from gpuserve.service import ApiSpec

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class BadRequest(GpuserveError):
    """The request cannot be turned into an API call (HTTP 400)."""


class ArgumentDecoder:
    """Request bodies of one API to its keyword arguments.

    Built once per route: the key sets are ready, so a well-formed body costs
    one `orjson.loads` and two set comparisons.
    """

    __slots__ = ("api", "_params")

    def __init__(self, api: ApiSpec) -> None:
        self.api = api
        self._params = frozenset(api.params)

    def __call__(self, body: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if type(payload) is dict:
            keys = payload.keys()
            if keys <= self._params and self.api.required <= keys:
                return payload
        raise self._rejection(payload)

    def _rejection(self, payload: Any) -> BadRequest:
        api = self.api
        if not isinstance(payload, dict):
            return BadRequest(
                f"expected a JSON object of {api.name!r}'s parameters {list(api.params)}, "
                f"got {type(payload).__name__}"
            )
        unknown = payload.keys() - self._params
        if unknown:
            return BadRequest(f"unknown parameter(s) {sorted(unknown)} for {api.name!r}; it takes {list(api.params)}")
        return BadRequest(f"missing parameter(s) {sorted(api.required - payload.keys())} for {api.name!r}")


def _fallback(obj: Any) -> Any:
    # Tensors and arrays of any framework expose tolist(); the core names none of them.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=_OPTIONS)
