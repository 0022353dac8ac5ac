"""The public test kit for gpuserve and its plugin authors.

- `BackendConformance`: subclass it in your backend's tests to run the contract
  every backend must keep (see `conformance.py`);
- `fake_gpu` / `write_fake_inventory`: a GPU inventory for machines without
  GPUs, read through `GPUSERVE_FAKE_GPUS` (format in FAKE_GPUS.md);
- the pytest plugin (entry point `pytest11`): the `gpu` marker, which skips a
  test unless a real GPU is visible, and the `fake_gpus` fixture.
"""

from gpuserve.testing.conformance import BackendConformance
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

__all__ = ["BackendConformance", "fake_gpu", "write_fake_inventory"]
