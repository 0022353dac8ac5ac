"""Import a service named as `MODULE:ATTR`, the way the CLI is given it."""

from __future__ import annotations

import importlib
import sys

from gpuserve.errors import DeclarationError
from gpuserve.service import ServiceSpec, spec_of


def load_service(ref: str, search_path: str = ".") -> ServiceSpec:
    """Import `MODULE:ATTR` with `search_path` first on `sys.path`."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise DeclarationError(f"service {ref!r} is invalid: expected MODULE:ATTR, e.g. app:Classifier")
    if search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] and exc.name != module_name:
            raise
        raise DeclarationError(
            f"cannot import module {module_name!r} (from {ref!r}); run from the directory that holds it"
        ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise DeclarationError(f"module {module_name!r} has no attribute {attr!r} (from {ref!r})") from None
    return spec_of(obj)
