"""The Ray actor that hosts one replica: gpuserve's own `Replica`, built where Ray placed it.

Inside the actor, gpuserve's device discovery reads the `CUDA_VISIBLE_DEVICES`
Ray set for it, so the replica's devices are numbered from 0 as in a worker
process: `gpuserve.context().device` and `cuda:0` are its first GPU. Ray's
GPU ids name GPUs; if gpuserve cannot see as many there (no driver, a node
that declares GPUs it lacks), the build fails and says so: a replica never
falls back to the CPU silently.

Ray runs the methods of a threaded actor in threads of their own: `build`
runs in the default concurrency group; `run` there too when called as a plain
actor method, or, when the server compiled a graph of it, in the one thread
Ray runs that graph in, whose first trip makes it the replica's thread
(`Replica.adopt_thread`). Either way batches never overlap. `until_lost` waits
in a group of its own and never returns, so its reference fails the moment
the actor dies, even while it is idle.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import ray

from gpuserve.plugin import (
    BatchResult,
    Device,
    Encoder,
    GpuserveError,
    Placement,
    Replica,
    Resources,
    build_replica,
    discover,
    format_bytes,
    import_service,
)


@attrs.frozen
class ActorBuild:
    """What an actor needs to build its replica (pickled to wherever Ray placed it)."""

    service_ref: str
    sys_path: tuple[str, ...]  # absolute: the actor's working directory is not the server's
    backend_name: str
    worker_index: int
    instance: int
    on_gpus: bool  # False: the plan fell back to the CPU


def given_devices(resources: Resources, env: Mapping[str, str], where: str) -> tuple[Device, ...]:
    """The GPUs Ray gave this actor, as gpuserve discovers them here; an error naming the gap."""
    wanted = max(1, int(resources.gpu))
    visible = env.get("CUDA_VISIBLE_DEVICES")
    inventory = discover(env)
    devices = inventory.devices
    if len(devices) != wanted:
        why = f": {inventory.reason}" if inventory.reason else ""
        raise GpuserveError(
            f"Ray gave this replica CUDA_VISIBLE_DEVICES={visible!r} on {where} for {wanted} GPU(s), "
            f"but gpuserve sees {len(devices)} there ({inventory.source}){why}"
        )
    for device in devices:
        if not resources.matches(device.name):
            raise GpuserveError(f"Ray placed this replica on {device.label} {device.name} on {where}, "
                                f"which is not {resources.gpu_type}")
        if resources.gpu_memory is not None and device.memory_free < resources.gpu_memory:
            raise GpuserveError(
                f"{device.label} {device.name} on {where} has {format_bytes(device.memory_free)} free, "
                f"less than gpu_memory={format_bytes(resources.gpu_memory)} (Ray does not schedule GPU memory)"
            )
    return devices


@ray.remote(concurrency_groups={"watch": 1}, max_restarts=0)
class ReplicaActor:
    def __init__(self) -> None:
        self._replica: Replica | None = None

    def build(self, build: ActorBuild) -> dict[str, Any]:
        """Import the service, find the devices Ray gave, build the replica; where it is."""
        context = ray.get_runtime_context()
        where = f"node {ray.util.get_node_ip_address()} ({context.get_node_id()[:8]})"
        spec = import_service(build.service_ref, build.sys_path)
        resources = spec.resources
        if build.on_gpus:
            devices = given_devices(resources, os.environ, where)
            share = resources.gpu if resources.is_fraction else None
            memory_limit = int(share * devices[0].memory_total) if share is not None else None
        else:  # no GPU for a CPU replica, as in a worker process (Ray sets nothing when it gives none)
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            devices, share, memory_limit = (Device.cpu(0),), None, None
        placement = Placement(build.worker_index, build.instance, devices, memory_limit, share)
        self._replica = build_replica(spec, build.backend_name, placement)
        return {
            "where": where,
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "devices": [d.label for d in devices],
        }

    def run(self, api_name: str | None, items: Sequence[dict[str, Any]],
            encoders: Sequence[Encoder]) -> BatchResult | None:
        """One batch; with no API, none: the first trip of the compiled graph, which sets up its channels."""
        assert self._replica is not None, "run before build"
        if api_name is None:  # from the graph's own thread, which runs every batch from now on
            self._replica.adopt_thread()
            return None
        return self._replica.run(api_name, items, encoders)

    @ray.method(concurrency_group="watch")
    def until_lost(self) -> None:
        threading.Event().wait()
