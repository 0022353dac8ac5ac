"""A KServe v2 inference request, parsed: the JSON header, its tensors, and the API's arguments.

JSON tensors hold their `data` flat or nested, row-major; binary tensors (the
binary tensor extension) follow the JSON header in the body, each
`binary_data_size` bytes, little-endian, and become NumPy arrays over the
request's own bytes: no copy, no Python per element (so they are read-only).
BYTES elements are a 4-byte little-endian length and the bytes. FP16 (and
BF16, which NumPy cannot hold) arrive only as binary, as Triton has it.

A client sends the same header again and again (tritonclient does, for
tensors of the same shapes): a header whose inputs are all binary is checked
once and its plan kept on the model (the last `PLANS_PER_MODEL`, headers of up
to `PLANNED_HEADER_MAX` bytes); a request with that header and body size is
then only sliced into its arrays. Whatever depends on the tensors' bytes
(BYTES elements, the values an API takes as Python values) is still read from
each request.

Every problem is a `V2BadRequest` naming what is wrong; nothing here knows HTTP.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import orjson

from gpuserve.arrays import ANY
from gpuserve.errors import GpuserveError
from gpuserve.protocols.json_codec import json_type
from gpuserve.protocols.v2_model import BINARY_ONLY, DTYPES, Tensor, V2Model

_LENGTH = struct.Struct("<I")
PLANNED_HEADER_MAX = 4096
PLANS_PER_MODEL = 64
# Where a binary input lies: its tensor, shape, element count, and its start and end in the body.
Place = tuple[Tensor, tuple[int, ...], int, int, int]


class V2BadRequest(GpuserveError):
    """The request cannot be run: the protocol answers 400 with this message."""


@attrs.frozen
class Requested:
    """Which outputs to send, each as binary or as JSON."""

    names: tuple[str, ...]
    binary: Mapping[str, bool]


@attrs.frozen
class Parsed:
    kwargs: dict[str, Any]
    rows: int
    request_id: str | None
    requested: Requested


def header_length(raw: str | None, body_size: int) -> int:
    """The JSON header's length from `Inference-Header-Content-Length` (absent: the whole body)."""
    if raw is None:
        return body_size
    try:
        length = int(raw)
    except ValueError:
        raise V2BadRequest(f"Inference-Header-Content-Length {raw!r} is not a whole number") from None
    if not 0 < length <= body_size:
        raise V2BadRequest(f"Inference-Header-Content-Length {length} does not fit a body of {body_size} bytes")
    return length


@attrs.frozen
class _Plan:
    """A header of binary inputs, checked: where each input lies, the rows, the id and the outputs asked for."""

    inputs: tuple[Place, ...]
    rows: int
    request_id: str | None
    requested: Requested

    def apply(self, body: bytes | memoryview) -> Parsed:
        view = memoryview(body).toreadonly()
        kwargs = {tensor.name: _argument(tensor, _from_binary(tensor, shape, count, view[start:end]))
                  for tensor, shape, count, start, end in self.inputs}
        return Parsed(kwargs, self.rows, self.request_id, self.requested)


def parse(model: V2Model, body: bytes | memoryview, header_size: int) -> Parsed:
    if header_size > PLANNED_HEADER_MAX:
        return _parse(model, body, header_size, None)
    key = (bytes(memoryview(body)[:header_size]), len(body))
    plan = model.plans.get(key)
    if plan is not None:
        return plan.apply(body)
    places: list[Place] = []
    parsed = _parse(model, body, header_size, places)
    if len(places) == len(parsed.kwargs):  # every input was binary: nothing of the header's is per request
        if len(model.plans) >= PLANS_PER_MODEL:
            del model.plans[next(iter(model.plans))]  # the oldest
        model.plans[key] = _Plan(tuple(places), parsed.rows, parsed.request_id, parsed.requested)
    return parsed


def _parse(model: V2Model, body: bytes | memoryview, header_size: int,
           places: list[Place] | None) -> Parsed:
    """The request parsed; where each binary input lies goes to `places` (when given)."""
    try:
        header = orjson.loads(memoryview(body)[:header_size])
    except orjson.JSONDecodeError as exc:
        raise V2BadRequest(f"malformed JSON in the inference request: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise V2BadRequest("an inference request is a JSON object with a list of 'inputs'")
    binary = _BinaryBody(body, header_size)
    arrays: dict[str, Any] = {}
    for given in header["inputs"]:
        name, array = _input(model, given, binary, places)
        if name in arrays:
            raise V2BadRequest(f"input {name!r} is given twice")
        arrays[name] = array
    binary.check_all_read()
    missing = [t.name for t in model.inputs if t.name not in arrays and _required(model, t.name)]
    if missing:
        raise V2BadRequest(f"missing input(s) {missing}; model {model.name!r} takes "
                           f"{[t.name for t in model.inputs]}")
    rows = _rows(model, arrays)
    kwargs = {name: _argument(model.input(name), array) for name, array in arrays.items()}  # type: ignore[arg-type]
    request_id = header.get("id")
    return Parsed(kwargs, rows, request_id if isinstance(request_id, str) else None, _requested(model, header))


def _required(model: V2Model, name: str) -> bool:
    return next(p for p in model.api.signature.params if p.name == name).required


class _BinaryBody:
    """The body after the JSON header, handed out tensor by tensor, in order."""

    def __init__(self, body: bytes | memoryview, start: int) -> None:
        self.body = body
        self.offset = start

    def take(self, size: Any, name: str) -> memoryview:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise V2BadRequest(f"input {name!r}: binary_data_size {size!r} is invalid: expected a size in bytes >= 0")
        end = self.offset + size
        if end > len(self.body):
            raise V2BadRequest(f"input {name!r}: binary_data_size {size} runs past the end of the body "
                               f"({len(self.body) - self.offset} bytes left)")
        view = memoryview(self.body).toreadonly()[self.offset:end]  # the decode helper's body is writable
        self.offset = end
        return view

    def check_all_read(self) -> None:
        if self.offset != len(self.body):
            raise V2BadRequest(f"{len(self.body) - self.offset} bytes follow the last binary input")


def _input(model: V2Model, given: Any, binary: _BinaryBody,
           places: list[Place] | None) -> tuple[str, Any]:
    if not isinstance(given, dict) or not isinstance(given.get("name"), str):
        raise V2BadRequest("each input is an object with a 'name', a 'datatype', a 'shape' and its data")
    name = given["name"]
    tensor = model.input(name)
    if tensor is None:
        raise V2BadRequest(f"unknown input {name!r}; model {model.name!r} takes {[t.name for t in model.inputs]}")
    datatype = given.get("datatype")
    if datatype != tensor.datatype:
        raise V2BadRequest(f"input {name!r}: datatype {datatype!r} is wrong: the model takes {tensor.datatype}")
    shape = _shape(tensor, given.get("shape"))
    count = math.prod(shape)
    size = _parameters(given, f"input {name!r}").get("binary_data_size")
    if size is not None:
        data = binary.take(size, name)
        if places is not None:
            places.append((tensor, shape, count, binary.offset - len(data), binary.offset))
        return name, _from_binary(tensor, shape, count, data)
    if datatype in BINARY_ONLY:
        raise V2BadRequest(f"input {name!r}: {datatype} has no JSON form; send it as binary data")
    if "data" not in given:
        raise V2BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size")
    return name, _from_json(tensor, shape, count, given["data"])


def _parameters(given: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """The `parameters` of a request, an input or an output: an object (its unknown keys ignored), or none."""
    parameters = given.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise V2BadRequest(f"{where}: 'parameters' must be an object, not {json_type(parameters)}")
    return parameters


def _shape(tensor: Tensor, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise V2BadRequest(f"input {tensor.name!r}: shape {shape!r} is invalid: expected a list of lengths >= 0")
    if len(shape) != len(tensor.shape) and tensor.shape != (ANY,):
        raise V2BadRequest(f"input {tensor.name!r}: shape {shape} has {len(shape)} dimensions; the model takes "
                           f"{list(tensor.shape)}")
    if tensor.shape != (ANY,) or len(shape) == 1:
        for got, want in zip(shape, tensor.shape):
            if want != ANY and got != want:
                raise V2BadRequest(f"input {tensor.name!r}: shape {shape} does not match the model's "
                                   f"{list(tensor.shape)} (-1: any length)")
    return tuple(shape)


def _from_binary(tensor: Tensor, shape: tuple[int, ...], count: int, data: memoryview) -> Any:
    if tensor.datatype == "BYTES":
        values = _bytes_elements(tensor.name, data)
        if len(values) != count:
            raise V2BadRequest(f"input {tensor.name!r}: shape {list(shape)} holds {count} element(s), the binary "
                               f"data {len(values)}")
        return np.array(values, dtype=object).reshape(shape)
    dtype = DTYPES[tensor.datatype]
    if count * dtype.itemsize != len(data):
        raise V2BadRequest(f"input {tensor.name!r}: shape {list(shape)} of {tensor.datatype} needs "
                           f"{count * dtype.itemsize} bytes, binary_data_size is {len(data)}")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)


def _bytes_elements(name: str, data: memoryview) -> list[bytes]:
    values, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise V2BadRequest(f"input {name!r}: a BYTES element's length is cut off")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise V2BadRequest(f"input {name!r}: a BYTES element of {length} bytes runs past its data")
        values.append(bytes(data[offset:offset + length]))
        offset += length
    return values


def _from_json(tensor: Tensor, shape: tuple[int, ...], count: int, data: Any) -> Any:
    if not isinstance(data, list):
        raise V2BadRequest(f"input {tensor.name!r}: 'data' must be a list, got {type(data).__name__}")
    if tensor.datatype == "BYTES":
        flat = np.array(data, dtype=object).ravel()
        if not all(isinstance(v, str) for v in flat):
            raise V2BadRequest(f"input {tensor.name!r}: BYTES data in JSON are strings")
    else:
        try:
            flat = np.array(data).ravel()
        except ValueError:
            raise V2BadRequest(f"input {tensor.name!r}: the nested 'data' is ragged") from None
        expected = "b" if tensor.datatype == "BOOL" else ("fiu" if tensor.datatype.startswith("FP") else "iu")
        if flat.size and flat.dtype.kind not in expected:
            raise V2BadRequest(f"input {tensor.name!r}: {tensor.datatype} data must be "
                               f"{'booleans' if expected == 'b' else 'numbers'}, got {flat.dtype.kind!r} values")
        flat = _cast(tensor, flat)
    if flat.size != count:
        raise V2BadRequest(f"input {tensor.name!r}: shape {list(shape)} holds {count} element(s), 'data' {flat.size}")
    return flat.reshape(shape)


def _cast(tensor: Tensor, flat: Any) -> Any:
    dtype = DTYPES[tensor.datatype]
    if dtype.kind in "iu" and flat.size:
        info = np.iinfo(dtype)
        if flat.dtype.kind == "f" or flat.min() < info.min or flat.max() > info.max:
            raise V2BadRequest(f"input {tensor.name!r}: {tensor.datatype} data must be integers within "
                               f"{info.min}..{info.max}")
    return flat.astype(dtype, copy=False)


def _rows(model: V2Model, arrays: Mapping[str, Any]) -> int:
    """Rows per request of a batchable model: the first dimension, the same for every input."""
    if not model.api.batchable:
        return 1
    counts = {name: array.shape[0] if array.ndim else 1 for name, array in arrays.items()}
    found = set(counts.values())
    if len(found) > 1:
        raise V2BadRequest(f"the inputs of {model.name!r} carry different numbers of rows (first dimension): "
                           + ", ".join(f"{name}: {n}" for name, n in counts.items()))
    rows = found.pop() if found else 1
    limit = model.api.max_batch_size
    if not 1 <= rows <= limit:
        raise V2BadRequest(f"{model.name!r} takes 1..{limit} rows per request (max_batch_size), got {rows}")
    return rows


def _argument(tensor: Tensor, array: Any) -> Any:
    """What the API's method receives for a tensor: the array, a Python value, or a list of rows."""
    if tensor.kind == "array":  # its datatype and shape were checked against the declaration
        return array
    if tensor.datatype == "BYTES":
        values = [_text(tensor.name, v) for v in array.ravel()]
        return values[0] if tensor.kind == "scalar" else values
    return array.reshape(-1)[0].item() if tensor.kind == "scalar" else array.tolist()


def _text(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        raise V2BadRequest(f"input {name!r}: a BYTES element is not UTF-8 text, which the API takes") from None


def _requested(model: V2Model, header: Mapping[str, Any]) -> Requested:
    default = bool(_parameters(header, "the request").get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:  # every output; binary-only ones as binary whatever the default
        return Requested(tuple(t.name for t in model.outputs),
                         {t.name: default or t.datatype in BINARY_ONLY for t in model.outputs})
    if not isinstance(asked, list):
        raise V2BadRequest("'outputs' must be a list of objects with a 'name'")
    datatypes = {t.name: t.datatype for t in model.outputs}
    names, binary = [], {}
    for output in asked:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in datatypes:
            raise V2BadRequest(f"unknown output {name!r}; model {model.name!r} has {sorted(datatypes)}")
        names.append(name)
        own = _parameters(output, f"output {name!r}").get("binary_data")
        binary[name] = default if own is None else bool(own)
    for name in names:
        if datatypes[name] in BINARY_ONLY and not binary[name]:
            raise V2BadRequest(f"output {name!r} is {datatypes[name]}, which has no JSON form: ask for it "
                               "with binary_data")
    return Requested(tuple(names), binary)
