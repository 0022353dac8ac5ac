"""An API as a KServe v2 model: its inputs and outputs as tensors, read from its declarations.

Each API of a service is a v2 model named after it. A parameter is an input
tensor when its annotation names one: a NumPy array (its dtype and shape; the
batch dimension of a batchable API included, as -1), `int` / `float` / `bool`
/ `str` (INT64 / FP64 / BOOL / BYTES of shape [1]), or, for a batchable API,
a list of those (shape [-1]) or of lists of numbers (shape [-1, -1]). The
return value gives the outputs: one tensor `output`, or, when each result is a
TypedDict or a pydantic model of such fields, one tensor per field (a column
per field, a row per request row). An API whose declarations name no tensor
(a pydantic model parameter, an unannotated one) is not a v2 model; the reason
says which parameter.

The `Answer` encoder runs beside the model (in the replica's thread or
process): it turns a request's result into NumPy arrays (`Outputs`) and
frames them as the protocol's answer, JSON or binary. No aiohttp here.
"""

from __future__ import annotations

import inspect
import struct
import typing
from typing import Any

import attrs
import numpy as np
import orjson

from gpuserve.arrays import ANY
from gpuserve.service import ApiSpec

# Datatypes of the protocol and their NumPy dtypes (BYTES: Python strings or bytes, dtype object).
DTYPES: dict[str, Any] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPE_OF = {dtype.name: name for name, dtype in DTYPES.items() if name != "BYTES"}
BINARY_ONLY = frozenset({"FP16", "BF16"})  # no JSON form, as in Triton
_SCALARS = {int: "INT64", float: "FP64", bool: "BOOL", str: "BYTES"}
_LENGTH = struct.Struct("<I")  # a BYTES element's length in binary data
FRAME_UP_TO = 64 * 1024  # bytes of binary outputs framed whole beside the model


class NotATensor(Exception):
    """The declaration has no tensor form; the message says which and why."""


@attrs.frozen
class Tensor:
    """One input or output: its name, datatype, shape (-1: any length) and what the API sees."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    kind: str  # "array" (a NumPy array), "scalar" (one Python value), "list" (rows as a list)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@attrs.frozen
class V2Model:
    api: ApiSpec
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    columns: bool  # the result is rows of records: one output per field
    # What headers of binary inputs said, checked once (`v2_request.parse`): header and body size -> plan.
    plans: dict[tuple[bytes, int], Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def name(self) -> str:
        return self.api.name

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)


def v2_model(api: ApiSpec) -> V2Model:
    """The v2 form of an API, or `NotATensor` saying why it has none."""
    batch = (ANY,) if api.batchable else ()
    inputs = []
    for param in api.signature.params:
        if param.array is not None:
            shape = param.array.shape if param.array.shape is not None else (*batch, ANY)
            inputs.append(Tensor(param.name, _datatype(param.array.dtype), tuple(shape), "array"))
            continue
        if not param.annotated:
            raise NotATensor(f"parameter {param.name!r} has no annotation to give it a datatype")
        inputs.append(_tensor(param.name, param.annotation, api.batchable, f"parameter {param.name!r}"))
    returns = api.signature.returns
    if returns is inspect.Parameter.empty:
        raise NotATensor("its return value has no annotation to give its outputs datatypes")
    outputs, columns = _outputs(returns, api.batchable)
    return V2Model(api, tuple(inputs), outputs, columns)


def _datatype(dtype_name: str) -> str:
    return DATATYPE_OF[dtype_name]


def _tensor(name: str, annotation: Any, batchable: bool, where: str) -> Tensor:
    from gpuserve.arrays import array_spec

    spec = array_spec(annotation, where)
    if spec is not None:
        shape = spec.shape if spec.shape is not None else ((ANY,) if batchable else (ANY,))
        return Tensor(name, _datatype(spec.dtype), tuple(shape), "array")
    if batchable:  # every parameter of a batchable API carries rows
        element = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if element in _SCALARS:
            return Tensor(name, _SCALARS[element], (ANY,), "list")
        inner = typing.get_args(element)[0] if typing.get_origin(element) is list else None
        if inner in (int, float, bool):
            return Tensor(name, _SCALARS[inner], (ANY, ANY), "list")
        raise NotATensor(f"{where} ({annotation!r}) has no tensor form: use a list of int, float, bool or "
                         "str, or an array")
    if annotation in _SCALARS:
        return Tensor(name, _SCALARS[annotation], (1,), "scalar")
    element = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
    if element in _SCALARS:
        return Tensor(name, _SCALARS[element], (ANY,), "list")
    raise NotATensor(f"{where} ({annotation!r}) has no tensor form: use int, float, bool, str, a list of "
                     "them, or an array")


def _outputs(returns: Any, batchable: bool) -> tuple[tuple[Tensor, ...], bool]:
    row = typing.get_args(returns)[0] if batchable and typing.get_origin(returns) is list else None
    record = row if batchable else returns
    fields = _fields(record)
    if fields:
        batch = (ANY,) if batchable else ()
        tensors = []
        for field, annotation in fields.items():
            one = _tensor(field, annotation, False, f"result field {field!r}")
            shape = batch + (one.shape if one.kind != "scalar" else ())
            tensors.append(Tensor(field, one.datatype, shape or (1,), one.kind))
        return tuple(tensors), True
    return (_tensor("output", returns, batchable, "the return value"),), False


def _fields(annotation: Any) -> dict[str, Any]:
    """A TypedDict's or a pydantic model's fields and their annotations ({} for anything else)."""
    if isinstance(annotation, type) and hasattr(annotation, "__annotations__") and hasattr(annotation, "__total__"):
        return typing.get_type_hints(annotation)
    model_fields = getattr(annotation, "model_fields", None)
    if isinstance(model_fields, dict):
        return {name: field.annotation for name, field in model_fields.items()}
    return {}


@attrs.frozen
class Outputs:
    """One request's result as `{output name: NumPy array}`; built once per API."""

    tensors: tuple[Tensor, ...]
    columns: bool
    batched: bool

    def __call__(self, result: Any) -> dict[str, Any]:
        if not self.columns:
            [tensor] = self.tensors
            return {tensor.name: _array(result, tensor)}
        rows = result if self.batched else [result]
        out = {}
        for tensor in self.tensors:
            column = [_field(row, tensor.name) for row in rows]
            out[tensor.name] = _array(column if self.batched else column[0], tensor)
        return out


@attrs.frozen
class Answer:
    """The encoder of a v2 inference request: its result framed as the protocol's answer, beside the model.

    It returns the JSON answer as bytes when no output is binary. With binary
    outputs, a small answer is framed whole here, `(body, header_length)`; a
    large one comes back as `(head, blobs)`, its outputs as arrays over their
    own buffers, for the route to join: a large buffer made in the replica's
    thread and freed by the event loop costs more than the copy (0.6 ms for a
    602 KB image), and an array reaches the server from a worker process
    without being copied into the pickle. The JSON is encoded beside the model
    either way. It pickles by value (its fields) to reach a worker process;
    requests that ask for the same outputs share one (`answer_for`), so a
    batch pickles it once.
    """

    outputs: Outputs
    model: str
    version: str
    requested: tuple[tuple[str, bool], ...]  # (output name, as binary), in the order asked
    request_id: str | None = None  # the request's own `id`, echoed

    def __call__(self, result: Any) -> bytes | tuple[bytes, int] | tuple[bytes, tuple[Any, ...]]:
        arrays = self.outputs(result)
        datatypes = {tensor.name: tensor.datatype for tensor in self.outputs.tensors}
        entries, blobs = [], []
        for name, binary in self.requested:
            array, datatype = arrays[name], datatypes[name]
            entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
            if binary:
                blob = _raw(array, datatype)
                entry["parameters"] = {"binary_data_size": blob.nbytes}
                blobs.append(blob)
            else:
                entry["data"] = _json_data(array, datatype)
            entries.append(entry)
        header: dict[str, Any] = {"model_name": self.model, "model_version": self.version, "outputs": entries}
        if self.request_id is not None:
            header["id"] = self.request_id
        head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return head
        if sum(blob.nbytes for blob in blobs) > FRAME_UP_TO:
            return head, tuple(blobs)
        return b"".join((head, *map(octets, blobs))), len(head)


def _raw(array: Any, datatype: str) -> Any:
    """A tensor's binary form, as an array (`nbytes`, the buffer protocol): little-endian, row-major;
    BYTES as a 4-byte length and the bytes of each element.

    A numeric array is its own buffer (copied only when it is not contiguous
    little-endian already).
    """
    if datatype == "BYTES":
        parts = []
        for value in array.ravel():
            data = value.encode() if isinstance(value, str) else bytes(value)
            parts += (_LENGTH.pack(len(data)), data)
        return np.frombuffer(b"".join(parts), dtype=np.uint8)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype].newbyteorder("<"))


def octets(blob: Any) -> memoryview:
    """A contiguous array's bytes, without a copy (an empty one too)."""
    return memoryview(blob.reshape(-1).view(np.uint8))


def _json_data(array: Any, datatype: str) -> Any:
    if datatype == "BYTES":
        return [v if isinstance(v, str) else bytes(v).decode(errors="replace") for v in array.ravel()]
    return np.ascontiguousarray(array).ravel()


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


def _array(value: Any, tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        values = [value] if tensor.kind == "scalar" and not isinstance(value, list) else value
        return np.array(values, dtype=object)
    array = np.asarray(value, dtype=DTYPES[tensor.datatype])
    return array.reshape(1) if array.ndim == 0 else array
