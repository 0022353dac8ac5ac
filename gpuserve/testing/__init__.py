"""The public test kit for gpuserve and its plugin authors.

- `BackendConformance`: subclass it in your backend's tests to run the contract
  every backend must keep (see `conformance.py`; it needs pytest);
- `ExecutorConformance`: subclass it to run the suite every kind of executor
  must pass, against a real server (`executor_conformance.py`; pytest too),
  with `served` (a real `gpuserve serve` on a free port), `batching_app` (a
  service whose calls are journaled and whose executors can be held busy) and
  `batching_client` (gates, the journal, `/stats`);
- `fake_gpu` / `write_fake_inventory`: a GPU inventory for machines without
  GPUs, read through `GPUSERVE_FAKE_GPUS` (format in FAKE_GPUS.md);
- the pytest plugin (entry point `pytest11`): the `gpu` marker, which skips a
  test unless a real GPU is visible, and the `fake_gpus` fixture.

Importing this package imports pytest only when a conformance class is used,
so the fake inventory helpers work in a plain install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

if TYPE_CHECKING:
    from gpuserve.testing.conformance import BackendConformance
    from gpuserve.testing.executor_conformance import ExecutorConformance

__all__ = ["BackendConformance", "ExecutorConformance", "fake_gpu", "write_fake_inventory"]


def __getattr__(name: str) -> Any:
    if name == "BackendConformance":
        from gpuserve.testing.conformance import BackendConformance

        return BackendConformance
    if name == "ExecutorConformance":
        from gpuserve.testing.executor_conformance import ExecutorConformance

        return ExecutorConformance
    raise AttributeError(f"module 'gpuserve.testing' has no attribute {name!r}")
