"""From a declared service to what will run: backend, executor kind, plan, executors.

Everything here happens before the server listens, so a plan that cannot fit,
a missing backend or an executor kind that is not installed stops the start
with its error, not the first request. The local kinds (`thread`, `process`)
live here: they plan on this machine's devices and narrow its visibility.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from typing import ClassVar

import attrs

from gpuserve.backend import Backend
from gpuserve.devices import FAKE_GPUS_ENV, Device, discover, warn_once
from gpuserve.devices.container import in_container
from gpuserve.devices.driver import cuda_initialized_here
from gpuserve.errors import BackendError, DeclarationError, PlanError
from gpuserve.executors import Executor, Placement, ProcessExecutor, ThreadExecutor
from gpuserve.executors.kind import ExecutorKind, Target, load_kind
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
    kind: ExecutorKind  # where the replicas run; it made the plan
    base_env: Mapping[str, str]  # this process's environment before any narrowing

    @property
    def service_ref(self) -> str:
        """`module:qualname` of the service class: how another process imports it."""
        return service_ref_of(self.spec)

    def executors(self) -> list[Executor]:
        return self.kind.executors()

    def close(self) -> None:
        """Release what the executor kind holds; after every executor has stopped."""
        self.kind.close()


class LocalKind(ExecutorKind):
    """Replicas on this machine, planned on its devices: threads of the server, or processes.

    In thread isolation the server narrows its own `CUDA_VISIBLE_DEVICES` to the
    planned devices (in the target's environment, normally `os.environ`) before
    any framework initialises, so `cuda:0..k-1` are exactly the planned GPUs. In
    process isolation each child gets its own narrowed environment instead.
    """

    isolation: ClassVar[Isolation | None] = None  # None: the declared one, else chosen by the plan

    def plan(self) -> list[str]:
        target = self.target
        the_plan = local_plan(target.spec, target.settings, target.backend, target.environ)
        refuse_fake_gpus(target.backend, the_plan, target.environ)
        if the_plan.fallback_reason:
            log.warning("Serving on the CPU: %s", the_plan.fallback_reason)
        declared = self.isolation or target.settings.isolation or target.spec.isolation
        self.chosen = choose_isolation(declared, the_plan)
        self.base_env = dict(target.environ)
        lines = [f"isolation {self.chosen.value}", *the_plan.describe()]  # ordinals as the user's environment has them
        if self.chosen is Isolation.THREAD:
            the_plan = _narrow_this_process(the_plan, target.environ)
            target.backend.limit_visibility(the_plan.gpu_union())
        self.the_plan = the_plan  # ordinals as this process sees them after narrowing
        threads = self.cpu_threads()
        if threads is not None and not the_plan.gpu_union():
            lines.append(f"replicas on the CPU use {threads} intra-op thread(s) each (--cpu-threads)")
        return lines

    def local_gpus(self) -> tuple[Device, ...]:
        return self.the_plan.gpu_union()

    def placements(self) -> list[Placement]:
        instances = self.target.settings.instances_per_device
        # Frameworks cap GPU memory per process. Thread replicas share the server
        # process, so its cap on a device is the sum of its workers' shares; a
        # worker's instances split that worker's share.
        shared: dict[str, float] = {}
        for worker in self.the_plan.workers:
            if worker.memory_fraction is not None:
                uuid = worker.devices[0].uuid
                shared[uuid] = min(shared.get(uuid, 0.0) + worker.memory_fraction, 1.0)
        placements = []
        threads = self.cpu_threads()
        for worker in self.the_plan.workers:
            fraction = worker.memory_fraction
            if fraction is not None and self.chosen is Isolation.THREAD:
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
        settings = self.target.settings
        if settings.cpu_threads is not None:
            return settings.cpu_threads or None
        replicas = sum(not any(d.is_gpu for d in w.devices) for w in self.the_plan.workers)
        replicas *= settings.instances_per_device
        if not replicas:
            return None
        return max(1, (usable_cores() - 1) // replicas)

    def executors(self) -> list[Executor]:
        spec, backend = self.target.spec, self.target.backend
        if self.chosen is Isolation.PROCESS:
            return [
                ProcessExecutor(spec, backend, p, service_ref=self.target.service_ref, base_env=self.base_env)
                for p in self.placements()
            ]
        return [ThreadExecutor(spec, backend, p) for p in self.placements()]


class ThreadKind(LocalKind):
    """`--executors thread`: each replica a thread of the server process."""

    name = "thread"
    isolation = Isolation.THREAD


class ProcessKind(LocalKind):
    """`--executors process`: each replica a process that sees only its own GPUs."""

    name = "process"
    isolation = Isolation.PROCESS


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system says, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def service_ref_of(spec: ServiceSpec) -> str:
    return f"{spec.cls.__module__}:{spec.cls.__qualname__}"


def choose_backend(spec: ServiceSpec, settings: Settings, environ: Mapping[str, str]) -> tuple[BackendEntry, Backend]:
    entry = default_registry().choose(settings.backend, spec.backend, fake_gpus=bool(environ.get(FAKE_GPUS_ENV)))
    assert entry.cls is not None
    return entry, entry.cls()


def local_plan(spec: ServiceSpec, settings: Settings, backend: Backend, environ: Mapping[str, str]) -> Plan:
    """The plan on this machine's devices (the inventory under `environ`)."""
    seen = in_container(discover(environ), environ)  # in a container, an empty inventory says why
    warn_once(seen.inventory)
    if seen.note:
        log.log(logging.WARNING if seen.ignored else logging.INFO, "%s", seen.note)
    return plan(
        spec.resources,
        settings.workers or spec.workers,
        seen.inventory,
        require_gpu=settings.require_gpu,
        cpu_devices=settings.cpu_devices,
        gpu_capable=backend.uses_gpus,
        gpu_incapable_reason=f"backend {backend.name!r} runs on the CPU only",
        instances=settings.instances_per_device,
    )


def plan_service(
    spec: ServiceSpec, settings: Settings, environ: Mapping[str, str]
) -> tuple[BackendEntry, Backend, Plan]:
    """The backend `serve` would use and the plan it would follow on this machine (`gpuserve plan` shows it)."""
    entry, backend = choose_backend(spec, settings, environ)
    return entry, backend, local_plan(spec, settings, backend, environ)


def kind_of(spec: ServiceSpec, settings: Settings) -> type[ExecutorKind]:
    """The executor kind `--executors` names, else the one `--isolation` names, else the local kind."""
    name, isolation = settings.executors, settings.isolation
    if name and isolation and name != isolation.value:
        raise DeclarationError(
            f"--executors {name} and --isolation {isolation.value} disagree: give one of them "
            f"(--isolation chooses between the local kinds thread and process)"
        )
    name = name or (isolation.value if isolation else None)
    return load_kind(name) if name else LocalKind


def prepare(spec: ServiceSpec, settings: Settings, environ: MutableMapping[str, str]) -> Deployment:
    """Choose the backend and the executor kind, and plan the replicas (the kind may narrow `environ`)."""
    entry, backend = choose_backend(spec, settings, environ)
    base_env = dict(environ)
    kind = kind_of(spec, settings)(Target(spec, service_ref_of(spec), backend, settings, environ))
    lines = kind.plan()
    log.info("backend %s (%s %s), %s executors; plan:", entry.name, entry.distribution, entry.version,
             kind.name or "local")
    for line in lines:
        log.info("  %s", line)
    return Deployment(spec, settings, backend, kind, base_env)


def refuse_fake_gpus(backend: Backend, the_plan: Plan, environ: Mapping[str, str]) -> None:
    """A framework's backend on simulated GPUs would fail in the framework: say so, with the way out."""
    fake = environ.get(FAKE_GPUS_ENV)
    if fake and the_plan.gpu_union() and not backend.serves_fake_gpus:
        raise BackendError(
            f"the plan puts workers on the simulated GPUs of {FAKE_GPUS_ENV}={fake}, which backend "
            f"{backend.name!r} cannot run on: serve with --backend fake-gpu, or unset {FAKE_GPUS_ENV} "
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
