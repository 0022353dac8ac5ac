"""The public test kit for gpuserve and its plugin authors.

- `BackendConformance`: subclass it in your backend's tests to run the contract
  every backend must keep (see `conformance.py`; it needs pytest);
- `fake_gpu` / `write_fake_inventory`: a GPU inventory for machines without
  GPUs, read through `GPUSERVE_FAKE_GPUS` (format in FAKE_GPUS.md);
- the pytest plugin (entry point `pytest11`): the `gpu` marker, which skips a
  test unless a real GPU is visible, and the `fake_gpus` fixture;
- `serving`: a service served for real (`python -m gpuserve serve` on a free
  port, in a process of its own) and an HTTP client, for end-to-end tests.

Importing this package imports pytest only when `BackendConformance` is used,
so the fake inventory helpers work in a plain install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

if TYPE_CHECKING:
    from gpuserve.testing.conformance import BackendConformance

__all__ = ["BackendConformance", "fake_gpu", "write_fake_inventory"]


def __getattr__(name: str) -> Any:
    if name == "BackendConformance":
        from gpuserve.testing.conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'gpuserve.testing' has no attribute {name!r}")
