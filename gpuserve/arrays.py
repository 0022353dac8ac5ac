"""Array parameters: NumPy arrays declared with a dtype and optionally a shape.

    from typing import Annotated
    import numpy as np
    from numpy.typing import NDArray
    from gpuserve import Shape

    def predict(self, x: Annotated[NDArray[np.float32], Shape(-1, 8)]) -> ...

In JSON an array arrives as nested lists, row-major. With a `Shape`, pydantic
checks the nesting, each dimension's length (`-1`: any) and every element
strictly (numbers for a float dtype, integers within the dtype's range for an
integer one, booleans for bool; floats finite and within the dtype's range),
all in its compiled validator; then NumPy builds the array in one call. Without
a `Shape` any nesting is accepted that NumPy can make regular, and its element
kind is checked as a whole. For a batchable API the first dimension is the
batch: `-1`, with 1..max_batch_size rows per request.

NumPy is imported only by services that declare arrays; the core never needs it.
"""

from __future__ import annotations

import sys
import typing
from typing import Any

import attrs

from gpuserve.errors import DeclarationError

ANY = -1
# Which kinds of element JSON can carry for each kind of dtype (numpy's `dtype.kind` letters).
_ACCEPTS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
_KIND_NAMES = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans"}
_FOUND_NAMES = {"U": "strings", "O": "mixed or nested values", "f": "numbers with fractions", "b": "booleans"}


class Shape:
    """The shape of an array parameter: `Shape(-1, 8)`; -1 is a dimension of any length."""

    def __init__(self, *dims: int) -> None:
        if not dims or any(isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != ANY) for d in dims):
            raise DeclarationError(f"Shape{dims!r} is invalid: expected dimensions that are whole numbers >= 1 or -1")
        self.dims = dims

    def __repr__(self) -> str:
        return f"Shape{self.dims!r}"


@attrs.frozen
class ArraySpec:
    """An array parameter's dtype (a NumPy dtype name), shape (None: any) and, for a batch, its row limit."""

    dtype: str
    shape: tuple[int, ...] | None = None
    max_rows: int | None = None  # rows one request of a batchable API may carry: the first dimension's limit

    def describe(self) -> str:
        if self.shape is None:
            return f"an array of {self.dtype}"
        dims = ", ".join("*" if d == ANY else str(d) for d in self.shape)
        return f"an array of {self.dtype} with shape [{dims}]"

    def convert(self, value: Any) -> Any:
        """Checked nested lists (or an array) as a NumPy array of this spec; ValueError says what is wrong."""
        np = _numpy()
        target = np.dtype(self.dtype)
        try:
            found = value if isinstance(value, np.ndarray) else np.array(value)
        except ValueError:  # NumPy refuses ragged nesting
            raise ValueError(f"{self.describe()}: the nested lists are ragged (rows of different lengths)") from None
        if found.size and found.dtype.kind not in _ACCEPTS[target.kind]:
            what = _FOUND_NAMES.get(found.dtype.kind, str(found.dtype))
            raise ValueError(f"{self.describe()} ({_KIND_NAMES[target.kind]}), not {what}")
        if self.shape is not None and (
            found.ndim != len(self.shape) or any(want not in (ANY, got) for want, got in zip(self.shape, found.shape))
        ):
            raise ValueError(f"{self.describe()}, not shape [{', '.join(map(str, found.shape))}]")
        array = found.astype(target, copy=False)
        if target.kind == "f" and array.size and not np.isfinite(array).all():
            raise ValueError(f"{self.describe()} of finite numbers (no NaN or infinity, nothing beyond the dtype)")
        return array

    # pydantic: nested lists checked by its own validator, then `convert`.
    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        if self.shape is None:
            nested = core_schema.list_schema(max_length=self.max_rows)
        else:
            nested = self._element_schema()
            for depth, dim in reversed(list(enumerate(self.shape))):
                low, high = (dim, dim) if dim != ANY else (0, None)
                if depth == 0 and self.max_rows is not None:
                    low, high = 1, self.max_rows
                nested = core_schema.list_schema(nested, min_length=low, max_length=high, strict=True)
        return core_schema.no_info_after_validator_function(
            self.convert, nested, serialization=core_schema.plain_serializer_function_ser_schema(_tolist)
        )

    def __get_pydantic_json_schema__(self, core: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core)
        schema["description"] = self.describe()
        return schema

    def _element_schema(self) -> Any:
        from pydantic_core import core_schema

        np = _numpy()
        dtype = np.dtype(self.dtype)
        if dtype.kind == "b":
            return core_schema.bool_schema(strict=True)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return core_schema.int_schema(strict=True, ge=int(info.min), le=int(info.max))
        largest = float(np.finfo(dtype).max)
        return core_schema.float_schema(strict=True, allow_inf_nan=False, ge=-largest, le=largest)


def array_spec(annotation: Any, where: str, max_rows: int | None = None) -> ArraySpec | None:
    """The ArraySpec an annotation declares (`NDArray[dtype]`, optionally `Annotated` with a `Shape`), or None."""
    np = sys.modules.get("numpy")
    if np is None:  # no module imported NumPy, so no annotation can name its types
        return None
    shape = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        shapes = [e for e in extras if isinstance(e, Shape)]
        shape = shapes[0].dims if shapes else None
    if annotation is np.ndarray or typing.get_origin(annotation) is np.ndarray:
        return ArraySpec(_dtype_of(np, annotation, where), shape, max_rows)
    if shape is not None:
        raise DeclarationError(f"{where}: Shape applies to NumPy arrays (NDArray[...]), not to {annotation!r}")
    return None


def _dtype_of(np: Any, annotation: Any, where: str) -> str:
    args = typing.get_args(annotation)
    dtype_args = typing.get_args(args[1]) if len(args) == 2 else ()
    if not dtype_args or dtype_args[0] is typing.Any:
        raise DeclarationError(f"{where}: an array parameter needs a dtype, e.g. NDArray[np.float32]")
    dtype = np.dtype(dtype_args[0])
    if dtype.kind not in _ACCEPTS:
        raise DeclarationError(f"{where}: dtype {dtype} cannot arrive as JSON; use a float, int, uint or bool dtype")
    return dtype.name


def concatenate(arrays: list[Any]) -> Any:
    """Arrays joined along dimension 0 (rows of several requests, for one call)."""
    return _numpy().concatenate(arrays)


def _numpy() -> Any:
    import numpy

    return numpy


def _tolist(array: Any) -> Any:
    return array.tolist()
