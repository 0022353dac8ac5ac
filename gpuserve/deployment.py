"""From a declared service to what will run: backend, plan, visibility, executors.

Everything here happens before the server listens, so a plan that cannot fit
or a missing backend stops the start with its error, not the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping

import attrs

from gpuserve.backend import Backend
from gpuserve.devices import FAKE_GPUS_ENV, discover, warn_once
from gpuserve.devices.driver import cuda_initialized_here
from gpuserve.errors import BackendError, PlanError
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
        for worker in self.plan.workers:
            fraction = worker.memory_fraction
            if fraction is not None and self.isolation is Isolation.THREAD:
                fraction = shared[worker.devices[0].uuid]
            elif fraction is not None:
                fraction = fraction / instances
            placements += [
                Placement(worker.index, instance, worker.devices, worker.memory_limit, fraction)
                for instance in range(instances)
            ]
        return placements

    def executors(self) -> list[Executor]:
        if self.isolation is Isolation.PROCESS:
            return [
                ProcessExecutor(self.spec, self.backend, p, service_ref=self.service_ref, base_env=self.base_env)
                for p in self.placements()
            ]
        return [ThreadExecutor(self.spec, self.backend, p) for p in self.placements()]


def service_ref_of(spec: ServiceSpec) -> str:
    return f"{spec.cls.__module__}:{spec.cls.__qualname__}"


def plan_service(
    spec: ServiceSpec, settings: Settings, environ: Mapping[str, str]
) -> tuple[BackendEntry, Backend, Plan]:
    """The backend `serve` would use and the plan it would follow (`gpuserve plan` shows it)."""
    entry = default_registry().choose(settings.backend, spec.backend, fake_gpus=bool(environ.get(FAKE_GPUS_ENV)))
    assert entry.cls is not None
    backend = entry.cls()
    inventory = discover(environ)
    warn_once(inventory)
    the_plan = plan(
        spec.resources,
        settings.workers or spec.workers,
        inventory,
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
    refuse_fake_gpus(entry, the_plan, environ)
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
    return Deployment(spec, settings, backend, the_plan, isolation, service_ref_of(spec), base_env)


def refuse_fake_gpus(entry: BackendEntry, the_plan: Plan, environ: Mapping[str, str]) -> None:
    """A framework's backend on simulated GPUs would fail in the framework: say so, with the way out."""
    fake = environ.get(FAKE_GPUS_ENV)
    if fake and the_plan.gpu_union() and not entry.serves_fake_gpus:
        raise BackendError(
            f"the plan puts workers on the simulated GPUs of {FAKE_GPUS_ENV}={fake}, which backend "
            f"{entry.name!r} cannot run on: serve with --backend fake-gpu, or unset {FAKE_GPUS_ENV} "
            "to serve on this machine's own devices"
        )


def shares_a_gpu(the_plan: Plan) -> bool:
    """Whether fractional workers share a GPU (their memory caps need separate processes)."""
    hosts = [w.devices[0].uuid for w in the_plan.workers if w.memory_fraction is not None]
    return len(hosts) != len(set(hosts))


def choose_isolation(declared: Isolation | None, the_plan: Plan) -> Isolation:
    """The declared isolation, else threads, unless fractional workers share a GPU or MIG forbids.

    Frameworks cap GPU memory per process: two thread replicas at 0.5 would
    share one process cap, so by default such workers run as processes. One
    process enumerates one MIG device and nothing beside it, so threads, which
    all live in the server process, cannot hold a MIG device and another.
    """
    mig = the_plan.one_process_problem()
    if mig is not None and declared is Isolation.THREAD:
        raise PlanError(f"isolation='thread' puts every worker in the server process, but {mig}; "
                        "use isolation='process' (each worker then sees its own devices), or leave it unset")
    if declared is None:
        return Isolation.PROCESS if shares_a_gpu(the_plan) or mig is not None else Isolation.THREAD
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
