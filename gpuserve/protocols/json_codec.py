"""The native protocol's JSON: request bodies to checked API arguments, results to bytes.

A body is parsed by orjson (strict JSON: no NaN or Infinity literals, nesting
up to 1024 levels) and, when the API annotates its parameters, checked by
pydantic against them (`gpuserve.signature`). For a batchable API the rows of
each parameter are counted: 1..max_batch_size, the same for every parameter.

`encode_json` is the encoder the native routes hand the batcher with each
request, and `encode_event` (Server-Sent Events) and `encode_line` (NDJSON)
those of streaming routes, for each value; they run beside the model, in the
replica's thread or process, so this module imports nothing but orjson and the
declarations (never aiohttp).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import orjson

from gpuserve.errors import GpuserveError
from gpuserve.service import ApiSpec

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_SHOWN_ERRORS = 3


class BadRequest(GpuserveError):
    """The request cannot be turned into an API call (the protocol answers 400).

    `errors` lists each problem as `{"param", "path", "expected", "got"}` where known.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


Decoded = tuple[dict[str, Any], int]  # keyword arguments, and how many rows they carry


def argument_decoder(api: ApiSpec) -> Callable[[bytes | memoryview], Decoded]:
    """Request bodies of one API to its checked keyword arguments and row count.

    Built once per route. Without annotations a well-formed body costs one
    `orjson.loads` and two set comparisons; with them, one pydantic check.
    """
    params = frozenset(api.params)
    required = api.required
    loads = orjson.loads
    adapter = api.signature.validator
    # The adapter's core validator, called directly: the adapter's own method only adds a Python call.
    validator = adapter.validator if adapter is not None else None
    rows_of = _row_counter(api, checked=validator is not None) if api.batchable else None

    def decode(body: bytes | memoryview) -> Decoded:
        try:
            payload = loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        if validator is not None:
            kwargs = _checked(api, validator, payload)
        elif type(payload) is dict and params.issuperset(payload) and payload.keys() >= required:
            kwargs = payload
        else:
            raise _rejection(api, payload)
        return kwargs, (rows_of(kwargs) if rows_of is not None else 1)

    return decode


def _checked(api: ApiSpec, validator: Any, payload: Any) -> dict[str, Any]:
    if type(payload) is not dict:
        raise _rejection(api, payload)
    try:
        return validator.validate_python(payload)
    except _validation_error() as exc:  # looked up only when a check fails: an import per request costs
        raise _invalid(api, exc) from None


def _validation_error() -> type[Exception]:
    from pydantic import ValidationError

    return ValidationError


def _row_counter(api: ApiSpec, checked: bool) -> Callable[[dict[str, Any]], int]:
    """Rows per request of a batchable API: each parameter's length, all equal, 1..max_batch_size (a stream: 1)."""
    names = api.params
    limit = api.rows_per_request
    why = "a stream takes one row per request: each request is one stream" if api.streams else "max_batch_size"
    if checked and not api.streams and len(names) == 1 and api.required == {names[0]}:
        # The validator held the one parameter to a list (or array) of 1..limit rows already.
        name = names[0]
        return lambda kwargs: len(kwargs[name])

    def rows(kwargs: dict[str, Any]) -> int:
        counts = {}
        for name in names:
            if name not in kwargs:
                continue  # a default: one per row
            value = kwargs[name]
            if not isinstance(value, list) and not hasattr(value, "shape"):
                raise BadRequest(
                    f"parameter {name!r} of batchable API {api.name!r} carries rows: expected a list "
                    f"(or array) of 1..{limit} rows, got {json_type(value)}",
                    [{"param": name, "path": "", "expected": f"a list of 1..{limit} rows", "got": json_type(value)}],
                )
            counts[name] = len(value)
        found = set(counts.values())
        if len(found) > 1:
            raise BadRequest(f"the parameters of {api.name!r} carry different numbers of rows: "
                             + ", ".join(f"{name}: {n}" for name, n in counts.items()) + "; each must carry the same")
        count = found.pop() if found else 1
        if not 1 <= count <= limit:
            raise BadRequest(f"{api.name!r} takes 1..{limit} rows per request ({why}), got {count}")
        return count

    return rows


def _invalid(api: ApiSpec, exc: Any) -> BadRequest:
    """A pydantic ValidationError as a message naming parameter, path, expected and got."""
    errors = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        param = str(loc[0]) if loc else ""
        path = "".join(f"[{part!r}]" if isinstance(part, str) else f"[{part}]" for part in loc[1:])
        expected, got = _expected_and_got(api, error)
        errors.append({"param": param, "path": path, "expected": expected, "got": got})
    parts = [
        f"parameter {e['param']!r}{e['path']}: " + (e["expected"] if e["got"] is None else
                                                   f"expected {e['expected']}, got {e['got']}")
        for e in errors
    ]
    more = f" (and {len(parts) - _SHOWN_ERRORS} more)" if len(parts) > _SHOWN_ERRORS else ""
    return BadRequest(f"invalid arguments for {api.name!r}: " + "; ".join(parts[:_SHOWN_ERRORS]) + more, errors)


def _expected_and_got(api: ApiSpec, error: dict[str, Any]) -> tuple[str, str | None]:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "missing":
        return "is missing (it is required)", None
    if kind == "extra_forbidden":
        return f"unknown; {api.name!r} takes {list(api.params)}", None
    if kind == "too_short":
        return f"at least {ctx['min_length']} item(s)", f"{ctx['actual_length']}"
    if kind == "too_long":
        if api.streams and len(error["loc"]) == 1:  # a parameter's rows
            return "one row (each request of a streaming API is one stream)", f"{ctx['actual_length']} rows"
        return f"at most {ctx['max_length']} item(s)", f"{ctx['actual_length']}"
    if kind in _BOUNDS:
        sign, key = _BOUNDS[kind]
        return f"a number {sign} {ctx[key]:g}", _shown(error.get("input"))
    message = error["msg"].removeprefix("Value error, ")
    return message.removeprefix("Input should be ").removeprefix("expected "), _shown(error.get("input"))


_BOUNDS = {"less_than_equal": ("<=", "le"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"),
           "greater_than": (">", "gt")}  # pydantic's error types, and the key of their bound

def _shown(value: Any, limit: int = 60) -> str:
    try:
        text = orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def json_type(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words, for error messages: "a list", "an object"..."""
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", dict: "an object",
             list: "a list", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _rejection(api: ApiSpec, payload: Any) -> BadRequest:
    if not isinstance(payload, dict):
        return BadRequest(
            f"expected a JSON object of {api.name!r}'s parameters {list(api.params)}, got {json_type(payload)}"
        )
    unknown = payload.keys() - set(api.params)
    if unknown:
        return BadRequest(f"unknown parameter(s) {sorted(unknown)} for {api.name!r}; it takes {list(api.params)}")
    return BadRequest(f"missing parameter(s) {sorted(api.required - payload.keys())} for {api.name!r}")


def _fallback(obj: Any) -> Any:
    # Arrays and tensors of any framework expose tolist(), pydantic models model_dump();
    # the core names none of them.
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
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


def encode_event(value: Any) -> bytes:
    """One value of a stream as a Server-Sent Event: `data: <json>` and a blank line (JSON holds no newline)."""
    return b"data: " + encode_json(value) + b"\n\n"


def encode_line(value: Any) -> bytes:
    """One value of a stream as a line of NDJSON."""
    return encode_json(value) + b"\n"
