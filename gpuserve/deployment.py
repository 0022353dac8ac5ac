"""From a declared service to what will run: backend, plan, visibility, executors.

Everything here happens before the server listens, so a plan that cannot fit
or a missing backend stops the start with its error, not the first request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping

import attrs

from gpuserve.backend import Backend
from gpuserve.devices import discover
from gpuserve.devices.driver import cuda_initialized_here
from gpuserve.executors import Executor, Placement, ProcessExecutor, ThreadExecutor
from gpuserve.planner import Plan, plan
from gpuserve.registry import BackendEntry, default_registry
from gpuserve.service import Isolation, ServiceSpec
from gpuserve.settings import Settings

log = logging.getLogger("gpuserve")


@attrs.frozen
class Deployment:
    spec: ServiceSpec
    settings: Settings
    backend: Backend
    plan: Plan  # ordinals as the server process sees them after narrowing
    isolation: Isolation
    service_ref: str
    base_env: Mapping[str, str]

    def placements(self) -> list[Placement]:
        instances = self.settings.instances_per_device
        # Frameworks cap GPU memory per process. Thread replicas share the server
        # process, so its cap on a device is the sum of its workers' shares; a
        # worker's instances split that worker's share.
        shared: dict[str, float] = {}
        for worker in self.plan.workers:
            if worker.memory_fraction is not None:
                uuid = worker.devices[0].uuid
                shared[uuid] = min(shared.get(uuid, 0.0) + worker.memory_fraction, 1.0)
        placements = []
        threads = self.cpu_threads()
        for worker in self.plan.workers:
            fraction = worker.memory_fraction
            if fraction is not None and self.isolation is Isolation.THREAD:
                fraction = shared[worker.devices[0].uuid]
            elif fraction is not None:
                fraction = fraction / instances
            on_cpu = not any(d.is_gpu for d in worker.devices)
            placements += [
                Placement(worker.index, instance, worker.devices, worker.memory_limit, fraction,
                          threads if on_cpu else None)
                for instance in range(instances)
            ]
        return placements

    def cpu_threads(self) -> int | None:
        """Intra-op threads of each replica on the CPU (None: the framework's own default).

        `--cpu-threads` when given; else the cores this process may use, less
        one for the event loop, shared by the replicas on the CPU: a
        framework's default of one thread per core would have them all spin
        against the event loop and each other.
        """
        setting = self.settings.cpu_threads
        if setting is not None:
            return setting or None
        replicas = sum(not any(d.is_gpu for d in w.devices) for w in self.plan.workers)
        replicas *= self.settings.instances_per_device
        if not replicas:
            return None
        return max(1, (usable_cores() - 1) // replicas)

    def executors(self) -> list[Executor]:
        if self.isolation is Isolation.PROCESS:
            return [
                ProcessExecutor(self.spec, self.backend, p, service_ref=self.service_ref, base_env=self.base_env)
                for p in self.placements()
            ]
        return [ThreadExecutor(self.spec, self.backend, p) for p in self.placements()]


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system says, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def service_ref_of(spec: ServiceSpec) -> str:
    return f"{spec.cls.__module__}:{spec.cls.__qualname__}"


def plan_service(
    spec: ServiceSpec, settings: Settings, environ: Mapping[str, str]
) -> tuple[BackendEntry, Backend, Plan]:
    """The backend `serve` would use and the plan it would follow (`gpuserve plan` shows it)."""
    entry = default_registry().choose(settings.backend, spec.backend)
    assert entry.cls is not None
    backend = entry.cls()
    the_plan = plan(
        spec.resources,
        settings.workers or spec.workers,
        discover(environ),
        require_gpu=settings.require_gpu,
        cpu_devices=settings.cpu_devices,
        gpu_capable=backend.uses_gpus,
        gpu_incapable_reason=f"backend {entry.name!r} runs on the CPU only",
    )
    return entry, backend, the_plan


def prepare(spec: ServiceSpec, settings: Settings, environ: MutableMapping[str, str]) -> Deployment:
    """Choose the backend, plan the devices and narrow this process's visibility.

    In thread isolation the server narrows its own `CUDA_VISIBLE_DEVICES` to the
    planned devices (in `environ`, normally `os.environ`) before any framework
    initialises, so `cuda:0..k-1` are exactly the planned GPUs. In process
    isolation each child gets its own narrowed environment instead.
    """
    entry, backend, the_plan = plan_service(spec, settings, environ)
    if the_plan.fallback_reason:
        log.warning("Serving on the CPU: %s", the_plan.fallback_reason)
    isolation = choose_isolation(settings.isolation or spec.isolation, the_plan)
    # Ordinals as in the user's own environment, as `gpuserve plan` shows them.
    log.info("backend %s (%s %s), isolation %s; plan:", entry.name, entry.distribution, entry.version,
             isolation.value)
    for line in the_plan.describe():
        log.info("  %s", line)
    base_env = dict(environ)
    if isolation is Isolation.THREAD:
        the_plan = _narrow_this_process(the_plan, environ)
        backend.limit_visibility(the_plan.gpu_union())
    deployment = Deployment(spec, settings, backend, the_plan, isolation, service_ref_of(spec), base_env)
    threads = deployment.cpu_threads()
    if threads is not None and not the_plan.gpu_union():
        log.info("replicas on the CPU use %d intra-op thread(s) each (--cpu-threads)", threads)
    return deployment


def shares_a_gpu(the_plan: Plan) -> bool:
    """Whether fractional workers share a GPU (their memory caps need separate processes)."""
    hosts = [w.devices[0].uuid for w in the_plan.workers if w.memory_fraction is not None]
    return len(hosts) != len(set(hosts))


def choose_isolation(declared: Isolation | None, the_plan: Plan) -> Isolation:
    """The declared isolation, else threads, unless fractional workers share a GPU.

    Frameworks cap GPU memory per process: two thread replicas at 0.5 would
    share one process cap, so by default such workers run as processes.
    """
    if declared is None:
        return Isolation.PROCESS if shares_a_gpu(the_plan) else Isolation.THREAD
    if declared is Isolation.THREAD and shares_a_gpu(the_plan):
        log.warning("isolation='thread' with fractional workers sharing a GPU: frameworks cap memory per "
                    "process, so these replicas share one cap (the sum of their shares); use "
                    "isolation='process' to cap each")
    return declared


def _narrow_this_process(the_plan: Plan, environ: MutableMapping[str, str]) -> Plan:
    """Limit this process to the planned GPUs; the plan renumbered as CUDA will see it."""
    narrowed, visible = the_plan.narrowed()
    if the_plan.gpu_union() and cuda_initialized_here():
        # CUDA read CUDA_VISIBLE_DEVICES already; changing it now would change nothing.
        log.warning("CUDA was initialised before gpuserve could limit the visible GPUs (the service "
                    "module touched the GPU at import time): keeping the inherited numbering, so "
                    "use gpuserve.context().device rather than fixed cuda:N, and move device work "
                    "into the service's __init__")
        return the_plan
    environ["CUDA_VISIBLE_DEVICES"] = visible
    if narrowed.gpu_union():
        log.info("CUDA_VISIBLE_DEVICES narrowed to the planned GPUs: %s", visible)
    return narrowed
