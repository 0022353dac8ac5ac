"""Copying arrays, and dicts, lists and tuples of arrays, between host and GPU."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy

from gpuserve.plugin import CapabilityError

ACCEPTED = "a numpy or cupy array, or a dict, list or tuple of them"


def map_arrays(obj: Any, convert: Callable[[Any], Any]) -> Any:
    """`obj` with `convert` applied to every leaf; dicts, lists and tuples rebuilt."""
    if isinstance(obj, dict):
        return {key: map_arrays(value, convert) for key, value in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple keeps its type
        return type(obj)._make(map_arrays(item, convert) for item in obj)
    if isinstance(obj, tuple):
        return tuple(map_arrays(item, convert) for item in obj)
    if isinstance(obj, list):
        return [map_arrays(item, convert) for item in obj]
    return convert(obj)


def _refuse(backend: str, obj: Any, target: str) -> CapabilityError:
    return CapabilityError(backend, f"place a {type(obj).__name__} on {target}", f"expected {ACCEPTED}")


def to_gpu(cupy: ModuleType, obj: Any, backend: str, target: str) -> Any:
    """A copy of `obj`'s arrays on the current CUDA device (the caller makes it current)."""

    def convert(leaf: Any) -> Any:
        if isinstance(leaf, (numpy.ndarray, cupy.ndarray)):
            return cupy.array(leaf, copy=True)
        raise _refuse(backend, leaf, target)

    return map_arrays(obj, convert)


def to_host(cupy: ModuleType, obj: Any, backend: str, target: str) -> Any:
    """A copy of `obj`'s arrays in host memory, as numpy arrays."""

    def convert(leaf: Any) -> Any:
        if isinstance(leaf, cupy.ndarray):
            return cupy.asnumpy(leaf)
        if isinstance(leaf, numpy.ndarray):
            return numpy.array(leaf, copy=True)
        raise _refuse(backend, leaf, target)

    return map_arrays(obj, convert)
