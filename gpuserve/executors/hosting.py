"""Hosting a replica in a process of its own: a worker process, a Ray actor, any remote executor.

Such a process is given the service as `MODULE:ATTR` with the server's
`sys.path`, the backend by name and its `Placement` (devices numbered as this
process sees them), and builds the replica here: the same `Replica` the
server's threads build, so a batch runs the same way wherever it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gpuserve.executors.base import Placement
from gpuserve.executors.replica import Replica
from gpuserve.loader import load_service
from gpuserve.registry import default_registry
from gpuserve.service import ServiceSpec


def import_service(service_ref: str, sys_path: Sequence[str] = ()) -> ServiceSpec:
    """Import `MODULE:ATTR` with the server's `sys_path` entries first (where they are missing)."""
    for entry in reversed(sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return load_service(service_ref)


def build_replica(spec: ServiceSpec, backend_name: str, placement: Placement) -> Replica:
    """Load the backend, limit this process to the placement's devices and build the replica (blocking)."""
    entry = default_registry().get(backend_name)
    if entry.cls is None:
        raise RuntimeError(f"backend {backend_name!r} failed to load here: {entry.error}")
    backend = entry.cls()
    backend.limit_visibility(placement.devices)
    replica = Replica(spec, placement.context(backend), placement.process_memory_fraction)
    replica.build()
    return replica
