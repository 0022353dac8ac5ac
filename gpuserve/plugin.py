"""The public plugin API: everything a backend or plugin author needs, from one place.

    from gpuserve.plugin import Backend, Device, Viability, MemoryInfo, CapabilityError

This module is the stable surface for code outside the core: first-party
backends, third-party plugins and the conformance kit import from here and
nowhere else in `gpuserve`. Names not listed in `__all__` (and every other
module of `gpuserve`) are internal and may change between releases.

What is here:

- **Writing a backend** (`gpuserve.backends` entry points): `Backend`, its
  answers `Viability` and `MemoryInfo`, `host_memory()`, and `CpuBackend` to
  build a CPU-only backend on.
- **Container images** (`gpuserve build`): `ImageRequirements`, what
  `Backend.image_requirements()` answers, and `cuda_runtime_pinned_by()`,
  the CUDA version an installed distribution pins through NVIDIA's runtime
  wheel.
- **Devices**: `Device` (one GPU, MIG instance or virtual CPU device, as a
  frozen fact), `discover(env)` and its `Inventory`, `FAKE_GPUS_ENV` (the
  fake inventory's variable), UUID spelling (`format_uuid`, `uuid_key`,
  `same_device`), the CUDA driver without any framework
  (`cuda_driver_problem`, `cuda_device_uuid`), and the NVIDIA driver's and
  its CUDA's versions (`nvidia_driver_versions`).
- **Inside a replica**: `context()` and `ReplicaContext`.
- **Writing an executor kind** (`gpuserve.executors` entry points, chosen
  with `--executors NAME`): `ExecutorKind` and the `Target` it is given (the
  service's `ServiceSpec` with its `Resources`, the backend, the `Settings`),
  `Executor` (what the pool drives: `start`, `alive`, `run`, `restart`,
  `stop`, within `STOP_GRACE_S` unless told otherwise; `abandon` to give up
  on a stuck call, `on_lost` to call when the replica dies between batches),
  `Placement`, `BatchResult`, `Failure`, `Encoder`, `ExecutorDied` (raise it
  when the replica is lost), `ExecutorStuck` (raise it from `run` once
  `abandon` gave up on the call), `PlanError` (the replicas cannot fit),
  `format_bytes`, `valid_gpu_types()`;
  and to host a replica in a process of yours: `import_service`,
  `build_replica` and the `Replica` they build (`replica.run(api, items,
  encoders)` runs one batch; `replica.adopt_thread()` when the batches run in
  another thread than the build).
- **Errors**: `GpuserveError`, `BackendError`, `CapabilityError` (a capability
  the framework lacks: raise it, never fall back to another device).
- **Registration**: the entry-point groups `BACKENDS_GROUP`,
  `EXECUTORS_GROUP` and `PLUGINS_GROUP` (a `setup(app)` hook that receives the
  aiohttp application; the routes it adds are behind the same guard as
  gpuserve's own: API keys, allowed hosts, connection limits), and `installed_backend(name)` /
  `installed_backends()` (`BackendEntry`) to load backends as the server does.
"""

from __future__ import annotations

from gpuserve.backend import Backend, ImageRequirements, MemoryInfo, Viability, host_memory
from gpuserve.context import ReplicaContext, context
from gpuserve.cpu_backend import CpuBackend
from gpuserve.devices import FAKE_GPUS_ENV, Device, Inventory, discover
from gpuserve.devices import libcuda as _libcuda
from gpuserve.devices.nvml import driver_versions as nvidia_driver_versions
from gpuserve.devices.uuids import format_uuid, same_device, uuid_key
from gpuserve.distributions import cuda_runtime_pinned_by
from gpuserve.errors import BackendError, CapabilityError, GpuserveError, PlanError
from gpuserve.executors.base import STOP_GRACE_S, Executor, ExecutorDied, ExecutorStuck, Placement
from gpuserve.executors.hosting import build_replica, import_service
from gpuserve.executors.kind import EXECUTORS_GROUP, ExecutorKind, Target
from gpuserve.executors.replica import Replica
from gpuserve.outcomes import BatchResult, Encoder, Failure
from gpuserve.registry import BACKENDS_GROUP, PLUGINS_GROUP, BackendEntry, installed_backend, installed_backends
from gpuserve.resources import Resources, format_bytes, valid_gpu_types
from gpuserve.service import ServiceSpec
from gpuserve.settings import Settings


def cuda_driver_problem() -> str | None:
    """Why the CUDA driver cannot be used here, or None when it can. Never initialises CUDA."""
    return _libcuda.problem()


def cuda_device_uuid(ordinal: int) -> bytes:
    """The 16 UUID bytes of CUDA device `ordinal`, from the driver.

    Initialises CUDA: call it only after your framework has (its visibility
    is fixed by then). Raises `OSError` when the driver cannot answer.
    """
    return _libcuda.device_uuid(ordinal)


__all__ = [
    "BACKENDS_GROUP",
    "EXECUTORS_GROUP",
    "FAKE_GPUS_ENV",
    "PLUGINS_GROUP",
    "STOP_GRACE_S",
    "Backend",
    "BackendEntry",
    "BackendError",
    "BatchResult",
    "CapabilityError",
    "CpuBackend",
    "Device",
    "Encoder",
    "Executor",
    "ExecutorDied",
    "ExecutorStuck",
    "ExecutorKind",
    "Failure",
    "GpuserveError",
    "ImageRequirements",
    "Inventory",
    "MemoryInfo",
    "Placement",
    "PlanError",
    "Replica",
    "ReplicaContext",
    "Resources",
    "ServiceSpec",
    "Settings",
    "Target",
    "Viability",
    "build_replica",
    "context",
    "cuda_device_uuid",
    "cuda_driver_problem",
    "cuda_runtime_pinned_by",
    "discover",
    "format_bytes",
    "format_uuid",
    "host_memory",
    "import_service",
    "installed_backend",
    "installed_backends",
    "nvidia_driver_versions",
    "same_device",
    "uuid_key",
    "valid_gpu_types",
]
