"""The plan against a Ray cluster's resources: what each replica's actor asks Ray for, and whether it can fit.

Ray places the actors itself; gpuserve checks first that the cluster has room
for all of them (a node's GPUs, of the declared type, a CPU for each actor,
and the host memory declared, as Ray's `memory` resource), so a plan that
cannot fit stops the start with what was asked and what each node has, as the
local planner does, instead of actors that wait forever for resources that do
not exist. Ray does not schedule GPU memory: `gpu_memory` is checked in the
actor, on the GPU Ray gave it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from gpuserve.plugin import PlanError, Resources, format_bytes
from gpuserve_ray.accelerators import accelerator_type

ACCELERATOR_PREFIX = "accelerator_type:"  # how a Ray node lists the type of its GPUs among its resources
CPUS_PER_REPLICA = 1.0  # a replica keeps a core busy feeding its model


@attrs.frozen
class Node:
    """One live node of the cluster, as Ray reports its resources."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    accelerator_types: tuple[str, ...] = ()
    memory: float = 0.0  # bytes of Ray's `memory` resource: what actors that declare memory share

    @classmethod
    def from_ray(cls, info: dict[str, Any]) -> "Node":
        resources = info.get("Resources", {})
        return cls(
            node_id=info["NodeID"],
            address=info.get("NodeManagerAddress", "?"),
            cpus=float(resources.get("CPU", 0)),
            gpus=float(resources.get("GPU", 0)),
            accelerator_types=tuple(
                sorted(name.removeprefix(ACCELERATOR_PREFIX) for name in resources if name.startswith(ACCELERATOR_PREFIX))
            ),
            memory=float(resources.get("memory", 0)),
        )

    def describe(self) -> str:
        types = f" ({', '.join(self.accelerator_types)})" if self.accelerator_types else ""
        return (f"node {self.address} ({self.node_id[:8]}): {self.gpus:g} GPU{types}, {self.cpus:g} CPU, "
                f"{format_bytes(int(self.memory))} memory")


@attrs.frozen
class ActorRequest:
    """What each replica's actor asks Ray for."""

    num_gpus: float
    num_cpus: float = CPUS_PER_REPLICA
    accelerator_type: str | None = None
    memory: int | None = None  # bytes of host memory, as the service declared it

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_gpus": self.num_gpus, "num_cpus": self.num_cpus}
        if self.accelerator_type is not None:
            options["accelerator_type"] = self.accelerator_type
        if self.memory is not None:
            options["memory"] = self.memory
        return options

    def describe(self) -> str:
        typed = f", accelerator_type={self.accelerator_type}" if self.accelerator_type else ""
        memory = f", memory={format_bytes(self.memory)}" if self.memory is not None else ""
        return f"num_gpus={self.num_gpus:g}{typed}, num_cpus={self.num_cpus:g}{memory}"


@attrs.frozen
class ClusterPlan:
    request: ActorRequest
    workers: int
    lines: tuple[str, ...]
    fallback_reason: str | None = None  # set when on CPU although GPUs were asked for


def plan_on_cluster(
    resources: Resources,
    workers: int,
    nodes: Sequence[Node],
    *,
    where: str,
    require_gpu: bool = False,
    gpu_capable: bool = True,
    gpu_incapable_reason: str = "",
) -> ClusterPlan:
    """Each of `workers` replicas an actor asking for `resources`; `PlanError` when the cluster has no room."""
    fallback = None
    if resources.gpu > 0:
        unusable = None
        if not gpu_capable:
            unusable = f"the backend cannot use GPUs: {gpu_incapable_reason or 'no reason given'}"
        elif not any(node.gpus for node in nodes):
            unusable = f"the Ray cluster at {where} has no GPU"
        if unusable is not None:
            if require_gpu:
                raise PlanError(f"{_asked(resources, workers)} but GPUs are required and {unusable}; "
                                f"drop the GPU requirement to run on CPU")
            fallback = f"{_asked(resources, workers)} but {unusable}"
    on_gpus = resources.gpu > 0 and fallback is None
    request = ActorRequest(
        num_gpus=resources.gpu if on_gpus else 0.0,
        accelerator_type=accelerator_type(resources.gpu_type) if on_gpus else None,
        memory=resources.memory,  # on the CPU too: the replica needs it wherever it runs
    )
    slots = {node.node_id: _slots(request, node) for node in nodes}
    if sum(slots.values()) < workers:
        raise PlanError(_cannot_fit(resources, workers, request, nodes, slots, where))
    lines = [
        f"Ray cluster at {where}: " + "; ".join(node.describe() for node in nodes),
        f"{workers} replica(s), each a Ray actor asking for {request.describe()}; Ray places them",
    ]
    if on_gpus and resources.gpu_memory is not None:
        lines.append(f"gpu_memory {format_bytes(resources.gpu_memory)}: checked on the GPU Ray assigns "
                     f"(Ray does not schedule GPU memory)")
    return ClusterPlan(request, workers, tuple(lines), fallback)


def _slots(request: ActorRequest, node: Node) -> int:
    """How many actors asking for `request` fit on `node` when it is empty."""
    by_cpu = math.floor(node.cpus / request.num_cpus + 1e-9) if request.num_cpus else math.inf
    by_memory = node.memory // request.memory if request.memory is not None else math.inf
    if request.num_gpus == 0:
        return int(min(by_cpu, by_memory))
    if request.accelerator_type is not None and request.accelerator_type not in node.accelerator_types:
        return 0
    if request.num_gpus < 1:  # a share of one GPU: Ray packs floor(1/share) onto each
        by_gpu = math.floor(node.gpus + 1e-9) * math.floor(1 / request.num_gpus + 1e-9)
    else:
        by_gpu = math.floor(node.gpus / request.num_gpus + 1e-9)
    return int(min(by_gpu, by_cpu, by_memory))


def _asked(resources: Resources, workers: int) -> str:
    per_worker = f"{resources.gpu:g} GPU" + ("" if resources.gpu <= 1 else "s")
    extra = [f"type {resources.gpu_type}"] if resources.gpu_type else []
    if resources.gpu == 0:
        per_worker = f"{CPUS_PER_REPLICA:g} CPU"
    if resources.memory is not None:
        extra.append(f"{format_bytes(resources.memory)} memory each")
    return f"asked for {workers} worker(s) x {per_worker}" + (f" ({', '.join(extra)})" if extra else "")


def _cannot_fit(
    resources: Resources, workers: int, request: ActorRequest, nodes: Sequence[Node], slots: dict[str, int], where: str
) -> str:
    lines = [
        f"cannot place the workers on the Ray cluster: {_asked(resources, workers)}, "
        f"each an actor asking for {request.describe()}.",
        f"The Ray cluster at {where} has {len(nodes)} live node(s):",
    ]
    for node in nodes:
        short = []
        if request.accelerator_type is not None and request.accelerator_type not in node.accelerator_types:
            short.append(f"not {request.accelerator_type}")
        if request.memory is not None and node.memory < request.memory:
            short.append(f"less than {format_bytes(request.memory)} memory")
        note = f"  [{'; '.join(short)}]" if short else ""
        lines.append(f"  {node.describe()}: room for {slots[node.node_id]}{note}")
    fits = sum(slots.values())
    options = [f"workers={fits}"] if fits else []
    typed = [n for n in nodes if request.accelerator_type in (None, *n.accelerator_types)]
    if request.num_gpus and typed:
        share = math.floor(100 * sum(math.floor(n.gpus + 1e-9) for n in typed) / workers) / 100
        if 0 < share < min(request.num_gpus, 1):
            options.append(f"gpu={share:g}")
    if request.accelerator_type is not None and not typed:
        present = sorted({t for n in nodes for t in n.accelerator_types})
        options.append(f"a gpu_type of the cluster's ({', '.join(present)})" if present else "no gpu_type")
    if request.memory is not None:
        less = _most_memory_that_fits(request, workers, nodes)
        if less is not None:
            options.append(f"memory='{less // 2**20}MiB'")
    if request.num_gpus:
        options.append("gpu=0 (CPU)")
    else:
        options.append("more CPUs in the cluster" if request.memory is None else "more CPUs or memory in the cluster")
    lines.append(f"Write instead one of: {'; '.join(options)}")
    return "\n".join(lines)


def _most_memory_that_fits(request: ActorRequest, workers: int, nodes: Sequence[Node]) -> int | None:
    """The most memory (whole MiB) each actor may ask for and all `workers` fit, when memory is what stops them."""
    # A node holds k actors exactly when each asks for at most its memory / k: those are the only values to try.
    tries = {int(node.memory // k) // 2**20 * 2**20 for node in nodes for k in range(1, workers + 1)}
    for memory in sorted(tries, reverse=True):
        if 0 < memory < (request.memory or 0):
            if sum(_slots(attrs.evolve(request, memory=memory), node) for node in nodes) >= workers:
                return memory
    return None
