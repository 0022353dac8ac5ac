"""`--executors ray`: each replica a Ray actor, planned against the cluster's resources.

`--ray-address HOST:PORT` (or `GPUSERVE_RAY_ADDRESS`) names the cluster's
head. Without it, Ray's own rule applies: `RAY_ADDRESS`, else the cluster
`ray start` started on this machine, else a new local Ray that lives as long
as the server.
"""

from __future__ import annotations

import logging
import os
import sys

import ray

from gpuserve.plugin import Executor, ExecutorKind, PlanError
from gpuserve_ray.actor import ActorBuild
from gpuserve_ray.cluster import ClusterPlan, Node, plan_on_cluster
from gpuserve_ray.executor import RayExecutor

log = logging.getLogger("gpuserve.ray")


class RayKind(ExecutorKind):
    name = "ray"

    def plan(self) -> list[str]:
        target = self.target
        settings = target.settings
        if settings.instances_per_device != 1:
            raise PlanError(
                f"instances_per_device={settings.instances_per_device} cannot be used with --executors ray: each "
                f"replica is an actor that Ray places; ask for --workers N (with a fractional gpu to share a GPU)"
            )
        context = ray.init(address=settings.ray_address, include_dashboard=False, logging_level=logging.WARNING)
        where = context.address_info.get("gcs_address") or settings.ray_address or "a local Ray"
        try:
            nodes = [Node.from_ray(info) for info in ray.nodes() if info.get("Alive")]
            self.cluster_plan: ClusterPlan = plan_on_cluster(
                target.spec.resources,
                target.workers,
                nodes,
                where=where,
                require_gpu=settings.require_gpu,
                gpu_capable=target.backend.uses_gpus,
                gpu_incapable_reason=f"backend {target.backend.name!r} runs on the CPU only",
            )
        except BaseException:
            self.close()
            raise
        if self.cluster_plan.fallback_reason:
            log.warning("Serving on the CPU: %s", self.cluster_plan.fallback_reason)
        return list(self.cluster_plan.lines)

    def executors(self) -> list[Executor]:
        target, plan = self.target, self.cluster_plan
        # Absolute: an actor's working directory is not the server's.
        sys_path = tuple(os.path.abspath(entry) for entry in sys.path if entry)
        return [
            RayExecutor(
                ActorBuild(target.service_ref, sys_path, target.backend.name, worker, 0, plan.request.num_gpus > 0),
                plan.request,
            )
            for worker in range(plan.workers)
        ]

    def close(self) -> None:
        """Leave the cluster (a local Ray that this server started ends with it)."""
        if ray.is_initialized():
            ray.shutdown()
