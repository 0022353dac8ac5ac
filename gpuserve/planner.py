"""The allocation plan: which devices each worker gets.

`plan(resources, workers, inventory)` places `workers` replicas, each needing
`resources`, on the devices in the inventory (which already honours the
inherited `CUDA_VISIBLE_DEVICES`, so a device outside it is never used):

- `gpu: 0`: CPU, workers spread round-robin over `cpu_devices` virtual devices.
- `gpu: N`: each worker N whole GPUs, disjoint across workers.
- `gpu: f` (0 < f < 1): workers packed onto GPUs, floor(1/f) per GPU at most,
  each capped at f of the GPU's memory; a GPU is never overcommitted.
- `gpu_type` keeps GPUs of that type; `gpu_memory` keeps GPUs with that much
  free (per worker), most free first.
- `memory`: the host's physical memory must hold every replica's (each of a
  worker's `instances` holds its own), whatever devices they get.
- A MIG device is the only device of its worker: one CUDA process enumerates
  one MIG device and no plain GPU beside it (NVIDIA's MIG user guide, see
  `gpuserve.devices.visibility`), so `gpu: N` with N >= 2 never takes one,
  and a plan whose GPUs include a MIG device beside others runs its workers
  as processes (`one_process_problem`).

A plan that cannot fit raises `PlanError` saying what was asked, what exists
and what to write instead. No usable GPU falls back to CPU with
`fallback_reason` set, or raises with `require_gpu`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from gpuserve.backend import host_memory
from gpuserve.devices import MIG_GUIDE, Device, Inventory
from gpuserve.errors import PlanError
from gpuserve.resources import Resources, format_bytes, valid_gpu_types


@attrs.frozen
class WorkerPlan:
    index: int
    devices: tuple[Device, ...]
    memory_limit: int | None = None  # bytes this worker may use on its GPU (fractions)
    memory_fraction: float | None = None


@attrs.frozen
class Plan:
    workers: tuple[WorkerPlan, ...]
    fallback_reason: str | None = None  # set when on CPU although GPUs were asked for
    inventory_source: str = ""
    memory: int | None = None  # host memory each replica declared (bytes)
    host_memory: int | None = None  # the host's physical memory it was checked against
    instances: int = 1  # replicas of each worker (`--instances-per-device`): each holds its own memory

    def gpu_union(self) -> tuple[Device, ...]:
        """Every planned GPU once, in CUDA ordinal order."""
        union = {d.index: d for worker in self.workers for d in worker.devices if d.is_gpu}
        return tuple(union[index] for index in sorted(union))

    def narrowed(self) -> tuple[Plan, str]:
        """The plan as seen after narrowing visibility to the planned GPUs (thread mode).

        Returns the plan with each GPU renumbered to its position in
        `gpu_union()`, and the `CUDA_VISIBLE_DEVICES` value (UUIDs, in that
        order) that makes those numbers true. A CPU plan gives "": no GPU.
        """
        union = self.gpu_union()
        position = {device.index: new for new, device in enumerate(union)}
        workers = tuple(
            attrs.evolve(
                worker,
                devices=tuple(d.renumbered(position[d.index]) if d.is_gpu else d for d in worker.devices),
            )
            for worker in self.workers
        )
        return attrs.evolve(self, workers=workers), ",".join(d.uuid for d in union)

    def one_process_problem(self) -> str | None:
        """Why one process cannot hold every planned GPU (threads need that), or None when it can."""
        union = self.gpu_union()
        migs = [d for d in union if d.is_mig]
        if not migs or len(union) == 1:
            return None
        return (
            f"the plan's {len(union)} GPUs include MIG device(s) {', '.join(d.uuid for d in migs)}, and one "
            f"CUDA process enumerates a single MIG device and no other device beside it ({MIG_GUIDE})"
        )

    def describe(self) -> list[str]:
        """One line per worker, then the host memory they declared if they did; for the startup log.

        A GPU shows its ordinal in this environment; one that this process does
        not enumerate (MIG) shows none: the worker's process, or the server
        narrowed to the plan's GPUs, numbers its devices from `cuda:0`.
        """
        lines = []
        for worker in self.workers:
            devices = ", ".join(d.described for d in worker.devices)
            cap = f", memory cap {format_bytes(worker.memory_limit)}" if worker.memory_limit else ""
            lines.append(f"worker {worker.index}: {devices}{cap}")
        if self.memory is not None and self.host_memory is not None:
            lines.append(f"{_memory_asked(self.memory, len(self.workers), self.instances)}; "
                         f"the host has {format_bytes(self.host_memory)}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "workers": [
                {
                    "index": worker.index,
                    "devices": [
                        {"index": d.index, "uuid": d.uuid, "name": d.name, "kind": d.kind,
                         "mig": d.is_mig, "enumerated": d.enumerated}
                        for d in worker.devices
                    ],
                    "memory_limit": worker.memory_limit,
                    "memory_fraction": worker.memory_fraction,
                }
                for worker in self.workers
            ],
            "fallback_reason": self.fallback_reason,
            "inventory_source": self.inventory_source,
            "memory": self.memory,
            "host_memory": self.host_memory,
            "instances": self.instances,
        }


def plan(
    resources: Resources | Mapping[str, Any],
    workers: int,
    inventory: Inventory,
    *,
    require_gpu: bool = False,
    cpu_devices: int = 1,
    gpu_capable: bool = True,
    gpu_incapable_reason: str = "",
    instances: int = 1,
) -> Plan:
    """Place `workers` workers, each needing `resources`, on `inventory`'s devices; each worker runs
    `instances` replicas, and each replica holds the host `memory` declared."""
    resources = Resources.parse(resources)
    for name, value in (("workers", workers), ("cpu_devices", cpu_devices), ("instances", instances)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PlanError(f"{name}={value!r} is invalid: it must be a whole number, 1 or more")
    host = None
    if resources.memory is not None:
        # The machine's physical memory (SC_PHYS_PAGES x SC_PAGE_SIZE, as `host_memory` reads it), not what
        # is free now: that rises and falls with the page cache and other processes, and one service on one
        # machine should plan the same each time.
        host = host_memory().total
        if workers * instances * resources.memory > host:
            raise PlanError(_no_room_in_memory(resources.memory, workers, instances, host))
    placed = _device_plan(resources, workers, inventory, require_gpu, cpu_devices, gpu_capable, gpu_incapable_reason)
    return attrs.evolve(placed, memory=resources.memory, host_memory=host, instances=instances)


def _device_plan(
    resources: Resources,
    workers: int,
    inventory: Inventory,
    require_gpu: bool,
    cpu_devices: int,
    gpu_capable: bool,
    gpu_incapable_reason: str,
) -> Plan:
    if resources.gpu == 0:
        return _cpu_plan(workers, cpu_devices, None, inventory.source)

    unusable = None
    if not gpu_capable:
        unusable = f"the backend cannot use GPUs: {gpu_incapable_reason or 'no reason given'}"
    elif not any(d.is_gpu for d in inventory.devices):
        unusable = f"no GPU is visible: {inventory.reason or 'the inventory is empty'}"
    if unusable is not None:
        if require_gpu:
            raise PlanError(
                f"{_asked(resources, workers)} but GPUs are required and {unusable}; "
                f"drop the GPU requirement to run on CPU"
            )
        reason = f"{_asked(resources, workers)} but {unusable}"
        return _cpu_plan(workers, cpu_devices, reason, inventory.source)

    usable, why_not = _usable(resources, inventory)
    placed = _place(resources, workers, usable)
    if placed is None:
        raise PlanError(_cannot_fit(resources, workers, inventory, usable, why_not))
    return Plan(workers=tuple(placed), inventory_source=inventory.source)


def _cpu_plan(workers: int, cpu_devices: int, reason: str | None, source: str) -> Plan:
    return Plan(
        workers=tuple(WorkerPlan(i, (Device.cpu(i % cpu_devices),)) for i in range(workers)),
        fallback_reason=reason,
        inventory_source=source,
    )


def _usable(resources: Resources, inventory: Inventory) -> tuple[list[Device], dict[int, str]]:
    """GPUs the resources allow, in the order to use them; and why each other GPU is out."""
    usable, why_not = [], {}
    for device in inventory.devices:
        if not device.is_gpu:
            continue
        if device.is_mig and resources.gpu >= 2:
            why_not[device.index] = "a MIG device, which a worker can only have alone"
        elif not resources.matches(device.name):
            why_not[device.index] = f"not {resources.gpu_type}"
        elif resources.gpu_memory is not None and device.memory_free < resources.gpu_memory:
            why_not[device.index] = f"less than {format_bytes(resources.gpu_memory)} free"
        elif resources.is_fraction and resources.gpu * device.memory_total < (resources.gpu_memory or 0):
            cap = format_bytes(int(resources.gpu * device.memory_total))
            wanted = format_bytes(resources.gpu_memory)
            why_not[device.index] = f"a {resources.gpu} share is {cap}, less than {wanted}"
        else:
            usable.append(device)
    if resources.gpu_memory is not None:
        usable.sort(key=lambda d: (-d.memory_free, d.index))  # stable: ties keep ordinal order
    return usable, why_not


def _place(resources: Resources, workers: int, usable: list[Device]) -> list[WorkerPlan] | None:
    if resources.is_fraction:
        return _pack_fractions(resources, workers, usable)
    return _whole(int(resources.gpu), workers, usable)


def _whole(count: int, workers: int, usable: list[Device]) -> list[WorkerPlan] | None:
    if count * workers > len(usable):
        return None
    return [
        WorkerPlan(i, tuple(sorted(usable[i * count : (i + 1) * count], key=lambda d: d.index)))
        for i in range(workers)
    ]


def _per_device(fraction: float) -> int:
    # 1e-9: 1/0.1 is 9.999999999999998 in floating point, yet ten 0.1 shares fit.
    return math.floor(1 / fraction + 1e-9)


# Memory every GPU shows in use (driver, contexts, a display) that a share may
# still count on: without it two 0.5 shares would never fit on a real GPU.
USED_ALLOWANCE = 0.05


def _slots(resources: Resources, device: Device) -> int:
    """How many workers of `resources.gpu` share fit on `device`.

    Shares are capped at fraction x total memory, so memory that others already
    use (beyond the driver's allowance) leaves room for fewer of them.
    """
    slots = _per_device(resources.gpu)
    cap = resources.gpu * device.memory_total
    if cap > 0:
        slots = min(slots, math.floor((device.memory_free + USED_ALLOWANCE * device.memory_total) / cap + 1e-9))
    if resources.gpu_memory is not None:
        slots = min(slots, device.memory_free // resources.gpu_memory)
    return slots


def _pack_fractions(resources: Resources, workers: int, usable: list[Device]) -> list[WorkerPlan] | None:
    hosts = [device for device in usable for _ in range(_slots(resources, device))]
    if len(hosts) < workers:
        return None
    return [
        WorkerPlan(
            i,
            (hosts[i],),
            memory_limit=int(resources.gpu * hosts[i].memory_total),
            memory_fraction=resources.gpu,
        )
        for i in range(workers)
    ]


def _asked(resources: Resources, workers: int) -> str:
    per_worker = f"{resources.gpu} GPU" + ("" if resources.gpu == 1 or resources.is_fraction else "s")
    extra = [f"type {resources.gpu_type}"] if resources.gpu_type else []
    if resources.gpu_memory is not None:
        extra.append(f"{format_bytes(resources.gpu_memory)} free each")
    return f"asked for {workers} worker(s) x {per_worker}" + (f" ({', '.join(extra)})" if extra else "")


def _memory_asked(memory: int, workers: int, instances: int) -> str:
    each = f"{instances} instance(s) x " if instances > 1 else ""
    total = format_bytes(workers * instances * memory)
    return f"{workers} worker(s) x {each}{format_bytes(memory)} of host memory ({total} in all)"


def _no_room_in_memory(memory: int, workers: int, instances: int, host: int) -> str:
    replicas = workers * instances
    options = [f"workers={host // (memory * instances)}"] if host >= memory * instances else []
    if host // replicas >= 2**20:
        options.append(f"memory='{host // replicas // 2**20}MiB'")
    return (
        f"cannot place the workers: asked for {_memory_asked(memory, workers, instances)}, "
        f"but this host has {format_bytes(host)} of physical memory.\n"
        f"Write instead one of: {'; '.join(options)}"
    )


def _cannot_fit(
    resources: Resources,
    workers: int,
    inventory: Inventory,
    usable: list[Device],
    why_not: dict[int, str],
) -> str:
    lines = [
        f"cannot place the workers: {_asked(resources, workers)}.",
        f"Visible GPUs ({inventory.source}):",
    ]
    for device in inventory.devices:
        note = f"  [{why_not[device.index]}]" if device.index in why_not else ""
        lines.append(
            f"  {device.described}: "
            f"{format_bytes(device.memory_free)} free of {format_bytes(device.memory_total)}{note}"
        )
    if inventory.cut_short:
        lines.append(f"Note: {inventory.cut_short}.")
    alternatives = _alternatives(resources, workers, inventory, usable)
    lines.append(f"Write instead one of: {'; '.join(alternatives)}")
    return "\n".join(lines)


def _alternatives(
    resources: Resources, workers: int, inventory: Inventory, usable: list[Device]
) -> list[str]:
    """Declarations that would fit (each checked by placing it), for the error message."""
    options = []
    if usable:
        if resources.is_fraction:
            capacity = sum(_slots(resources, d) for d in usable)
        else:
            capacity = len(usable) // int(resources.gpu)
            if resources.gpu > 1 and len(usable) >= workers:
                options.append(f"gpu={len(usable) // workers}")
        if capacity:
            options.insert(0, f"workers={capacity}")
        # The largest share (in hundredths) that packs every worker onto the usable GPUs.
        share = math.floor(100 / math.ceil(workers / len(usable))) / 100
        shared = attrs.evolve(resources, gpu=share) if 0 < share < min(resources.gpu, 1) else None
        if shared is not None and _place(shared, workers, _usable(shared, inventory)[0]) is not None:
            options.append(f"gpu={share:g}")
    gpus = [d for d in inventory.devices if d.is_gpu]
    typed = [d for d in gpus if resources.matches(d.name)]
    if resources.gpu_type and not typed:
        present = sorted(
            {t for t in valid_gpu_types() for d in gpus if Resources(gpu=1, gpu_type=t).matches(d.name)}
        )
        options.append("gpu_type=" + " / ".join(map(repr, present)) if present else "no gpu_type")
    elif resources.gpu_memory is not None and len(typed) > len(usable):
        # The most memory a GPU left out for memory offers: asking for no more admits it.
        room = max(
            min(d.memory_free, int(min(resources.gpu, 1) * d.memory_total)) for d in typed if d not in usable
        )
        options.append(f"gpu_memory='{room // 2**20}MiB'")
    options.append("gpu=0 (CPU)")
    return options
