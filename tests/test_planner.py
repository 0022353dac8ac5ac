"""The allocation plan: one test per rule, on fake inventories read through discovery."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gpuserve.devices import FAKE_GPUS_ENV, Inventory, discover
from gpuserve.errors import PlanError
from gpuserve.planner import Plan, plan
from gpuserve.resources import format_bytes
from gpuserve.testing.fake_inventory import fake_gpu, write_fake_inventory

GiB = 2**30


@pytest.fixture
def machine(tmp_path: Path):
    """`machine(gpus, **env)` -> the inventory discovery gives for those GPUs under env."""

    def build(gpus: Sequence[dict[str, Any]], **env: str) -> Inventory:
        path = write_fake_inventory(tmp_path / "gpus.json", gpus)
        return discover({FAKE_GPUS_ENV: path, **env})

    return build


def four_h100() -> list[dict[str, Any]]:
    return [fake_gpu(n) for n in range(4)]


def ordinals(result: Plan) -> list[list[int]]:
    return [[d.index for d in worker.devices] for worker in result.workers]


def test_gpu_zero_is_a_cpu_plan_round_robin(machine) -> None:
    result = plan({"gpu": 0}, 3, machine(four_h100()), cpu_devices=2)
    assert [[d.label for d in w.devices] for w in result.workers] == [["cpu:0"], ["cpu:1"], ["cpu:0"]]
    assert result.fallback_reason is None
    assert result.gpu_union() == ()


def test_whole_gpus_are_disjoint_across_workers(machine) -> None:
    result = plan({"gpu": 2}, 2, machine(four_h100()))
    assert ordinals(result) == [[0, 1], [2, 3]]
    assert all(w.memory_limit is None and w.memory_fraction is None for w in result.workers)


def test_fractional_packing_and_memory_cap(machine) -> None:
    result = plan({"gpu": 0.5}, 3, machine(four_h100()))
    assert ordinals(result) == [[0], [0], [1]]
    for worker in result.workers:
        assert worker.memory_fraction == 0.5
        assert worker.memory_limit == 40 * GiB  # half of 80 GiB


def test_fractions_never_overcommit_a_device(machine) -> None:
    one_gpu = machine([fake_gpu(0)])
    assert ordinals(plan({"gpu": 0.4}, 2, one_gpu)) == [[0], [0]]
    with pytest.raises(PlanError):
        plan({"gpu": 0.4}, 3, one_gpu)  # 1.2 of one GPU
    assert len(plan({"gpu": 0.1}, 10, one_gpu).workers) == 10  # ten shares of 0.1 do fit


def test_gpu_type_filter(machine) -> None:
    inventory = machine([fake_gpu(0, "NVIDIA L40S"), fake_gpu(1, "NVIDIA L4"), fake_gpu(2, "NVIDIA H100 80GB HBM3")])
    result = plan({"gpu": 1, "gpu_type": "nvidia-l4"}, 1, inventory)
    assert [d.name for d in result.workers[0].devices] == ["NVIDIA L4"]
    assert ordinals(plan({"gpu": 1, "gpu_type": "nvidia-h100"}, 1, inventory)) == [[2]]


def test_gpu_memory_picks_most_free_first(machine) -> None:
    inventory = machine([
        fake_gpu(0, memory_gib=80, used_gib=70),  # 10 GiB free: too little
        fake_gpu(1, memory_gib=80, used_gib=40),  # 40 GiB free
        fake_gpu(2, memory_gib=80, used_gib=10),  # 70 GiB free
    ])
    result = plan({"gpu": 1, "gpu_memory": "20GiB"}, 2, inventory)
    assert ordinals(result) == [[2], [1]]
    with pytest.raises(PlanError):
        plan({"gpu": 1, "gpu_memory": "20GiB"}, 3, inventory)


def test_fraction_cap_must_cover_gpu_memory(machine) -> None:
    inventory = machine([fake_gpu(0, memory_gib=40, used_gib=0), fake_gpu(1, memory_gib=80, used_gib=0)])
    # A quarter of 40 GiB is 10 GiB, below the 16 GiB asked for: only the 80 GiB GPU qualifies.
    result = plan({"gpu": 0.25, "gpu_memory": "16GiB"}, 4, inventory)
    assert ordinals(result) == [[1]] * 4
    assert result.workers[0].memory_limit == 20 * GiB


def test_devices_outside_inherited_visibility_are_never_used(machine) -> None:
    inventory = machine(four_h100(), CUDA_VISIBLE_DEVICES="3,1")
    result = plan({"gpu": 1}, 2, inventory)
    assert [w.devices[0].uuid for w in result.workers] == [fake_gpu(3)["uuid"], fake_gpu(1)["uuid"]]
    with pytest.raises(PlanError):
        plan({"gpu": 1}, 3, inventory)


def test_cannot_fit_names_what_was_asked_what_exists_and_what_to_write(machine) -> None:
    inventory = machine([fake_gpu(0, memory_gib=80, used_gib=2), fake_gpu(1, "NVIDIA L4", memory_gib=24)])
    with pytest.raises(PlanError) as caught:
        plan({"gpu": 1, "gpu_type": "nvidia-h100"}, 2, inventory)
    message = str(caught.value)
    assert "2 worker(s) x 1 GPU (type nvidia-h100)" in message
    assert f"cuda:0 NVIDIA H100 80GB HBM3 ({fake_gpu(0)['uuid']}): 78.0 GiB free of 80.0 GiB" in message
    assert "cuda:1 NVIDIA L4" in message and "[not nvidia-h100]" in message
    assert "workers=1" in message and "gpu=0.5" in message


def test_cannot_fit_memory_says_how_much_is_on_offer(machine) -> None:
    inventory = machine([fake_gpu(0, memory_gib=80, used_gib=30)])
    with pytest.raises(PlanError) as caught:
        plan({"gpu": 1, "gpu_memory": "64GiB"}, 1, inventory)
    message = str(caught.value)
    assert "64.0 GiB free each" in message and "[less than 64.0 GiB free]" in message
    assert "gpu_memory='51200MiB'" in message


def test_cpu_fallback_with_reason(machine) -> None:
    inventory = machine(four_h100(), CUDA_VISIBLE_DEVICES="")
    result = plan({"gpu": 1}, 2, inventory)
    assert [[d.label for d in w.devices] for w in result.workers] == [["cpu:0"], ["cpu:0"]]
    assert "2 worker(s) x 1 GPU" in result.fallback_reason
    assert "CUDA_VISIBLE_DEVICES is empty" in result.fallback_reason


def test_cpu_fallback_when_the_backend_cannot_use_gpus(machine) -> None:
    result = plan({"gpu": 1}, 1, machine(four_h100()), gpu_capable=False,
                  gpu_incapable_reason="backend 'cpu' runs on the CPU only")
    assert result.workers[0].devices[0].kind == "cpu"
    assert "backend 'cpu' runs on the CPU only" in result.fallback_reason


def test_require_gpu_error(machine) -> None:
    inventory = machine([])
    with pytest.raises(PlanError, match=r"GPUs are required.*no NVIDIA GPU found"):
        plan({"gpu": 1}, 1, inventory, require_gpu=True)
    with pytest.raises(PlanError, match=r"GPUs are required.*runs on the CPU only"):
        plan({"gpu": 1}, 1, machine(four_h100()), require_gpu=True, gpu_capable=False,
             gpu_incapable_reason="runs on the CPU only")


def test_invalid_worker_count_is_named() -> None:
    with pytest.raises(PlanError, match=r"workers=0 is invalid"):
        plan({"gpu": 0}, 0, Inventory())


def test_narrowed_renumbers_to_the_union_and_its_visibility_gives_the_same_devices(machine, tmp_path) -> None:
    gpus = [fake_gpu(0, used_gib=60), fake_gpu(1, used_gib=70), fake_gpu(2, used_gib=1)]
    inventory = machine(gpus)
    result = plan({"gpu": 1, "gpu_memory": "10GiB"}, 2, inventory)
    assert ordinals(result) == [[2], [0]]
    narrowed, visible = result.narrowed()
    assert ordinals(narrowed) == [[1], [0]]
    assert visible == f"{gpus[0]['uuid']},{gpus[2]['uuid']}"
    # Under that CUDA_VISIBLE_DEVICES, discovery numbers the devices exactly as the narrowed plan says.
    seen = machine(gpus, CUDA_VISIBLE_DEVICES=visible).devices
    for worker in narrowed.workers:
        for device in worker.devices:
            assert seen[device.index].uuid == device.uuid


def test_describe_and_to_json(machine) -> None:
    inventory = machine([fake_gpu(0)])
    result = plan({"gpu": 0.5}, 2, inventory)
    uuid = fake_gpu(0)["uuid"]
    assert result.describe() == [
        f"worker 0: cuda:0 NVIDIA H100 80GB HBM3 ({uuid}), memory cap 40.0 GiB",
        f"worker 1: cuda:0 NVIDIA H100 80GB HBM3 ({uuid}), memory cap 40.0 GiB",
    ]
    data = result.to_json()
    assert data["fallback_reason"] is None
    assert data["inventory_source"] == inventory.source
    assert data["memory"] is None and data["host_memory"] is None  # no host memory declared
    assert data["workers"][1] == {
        "index": 1,
        "devices": [{"index": 0, "uuid": uuid, "name": "NVIDIA H100 80GB HBM3", "kind": "cuda", "mig": False,
                     "enumerated": True}],
        "memory_limit": 40 * GiB,
        "memory_fraction": 0.5,
    }


# The host's memory is this machine's own: tests ask for more than any machine has, or for very little.
HOST_MEMORY = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_host_memory_too_small_for_every_worker_says_what_was_asked_and_what_the_host_has(machine) -> None:
    with pytest.raises(PlanError) as caught:
        plan({"gpu": 1, "memory": "1000TiB"}, 2, machine(four_h100()))
    message = str(caught.value)
    assert message.startswith("cannot place the workers: asked for 2 worker(s) x 1000.0 TiB of host memory "
                              f"(2000.0 TiB in all), but this host has {format_bytes(HOST_MEMORY)} of physical memory.")
    assert f"Write instead one of: memory='{HOST_MEMORY // 2 // 2**20}MiB'" in message
    # A CPU service is held to the host's memory too; one that fits alone is offered as fewer workers.
    with pytest.raises(PlanError, match=rf"Write instead one of: workers=2; memory='{HOST_MEMORY // 3 // 2**20}MiB'$"):
        plan({"memory": HOST_MEMORY // 2}, 3, Inventory())


def test_host_memory_counts_every_instance_of_every_worker(machine) -> None:
    """Each of a worker's instances (`--instances-per-device`) is a replica with its own copy of the model."""
    third = HOST_MEMORY // 3
    assert plan({"memory": third}, 1, Inventory(), instances=2).instances == 2  # two thirds: fits
    with pytest.raises(PlanError) as caught:
        plan({"memory": third}, 1, Inventory(), instances=4)
    message = str(caught.value)
    assert f"asked for 1 worker(s) x 4 instance(s) x {format_bytes(third)} of host memory" in message
    assert message.endswith(f"Write instead one of: memory='{HOST_MEMORY // 4 // 2**20}MiB'")
    with pytest.raises(PlanError, match=r"Write instead one of: workers=1; memory="):
        plan({"memory": third}, 2, Inventory(), instances=2)
    shown = plan({"memory": 2**20}, 2, Inventory(), instances=3)
    assert shown.describe()[-1].startswith("2 worker(s) x 3 instance(s) x 1.0 MiB of host memory (6.0 MiB in all)")


def test_host_memory_that_fits_is_in_the_plan_whatever_devices_the_workers_get(machine) -> None:
    inventory = machine([fake_gpu(0)])
    on_gpu = plan({"gpu": 0.5, "memory": "1MiB"}, 2, inventory)
    assert ordinals(on_gpu) == [[0], [0]]
    assert on_gpu.describe()[-1] == (f"2 worker(s) x 1.0 MiB of host memory (2.0 MiB in all); "
                                     f"the host has {format_bytes(HOST_MEMORY)}")
    assert (on_gpu.to_json()["memory"], on_gpu.to_json()["host_memory"]) == (2**20, HOST_MEMORY)
    on_cpu = plan({"memory": 2**20}, 3, inventory, cpu_devices=2)
    assert len(on_cpu.describe()) == 4 and on_cpu.describe()[-1].startswith("3 worker(s) x 1.0 MiB of host memory")
    fallback = plan({"gpu": 1, "memory": 2**20}, 1, inventory, gpu_capable=False)
    assert fallback.fallback_reason and fallback.memory == 2**20
    undeclared = plan({"gpu": 1}, 1, inventory)
    assert undeclared.memory is None and undeclared.host_memory is None and len(undeclared.describe()) == 1


def test_fraction_caps_count_memory_already_in_use() -> None:
    from gpuserve.planner import plan as make_plan
    from gpuserve.resources import Resources
    from gpuserve.devices import Device, Inventory

    GiB = 2**30
    busy = Device(index=0, uuid="GPU-busy", name="NVIDIA A100-SXM4-80GB", memory_total=80 * GiB, memory_used=40 * GiB)
    idle = Device(index=1, uuid="GPU-idle", name="NVIDIA A100-SXM4-80GB", memory_total=80 * GiB, memory_used=GiB // 2)
    # 0.3 shares are 24 GiB caps: the half-full GPU holds one, the idle one three.
    result = make_plan(Resources(gpu=0.3), 4, Inventory(devices=(busy, idle)))
    hosts = [w.devices[0].uuid for w in result.workers]
    assert hosts.count("GPU-busy") == 1 and hosts.count("GPU-idle") == 3


# -- MIG: one MIG device per CUDA process, nothing beside it ----------------------------------
def mig_a100(n: int, instances: int) -> dict[str, Any]:
    """An A100 with MIG on and `instances` 3g.40gb devices."""
    return fake_gpu(n, "NVIDIA A100-SXM4-80GB", mig=[
        {"uuid": f"MIG-{n:04x}{i:04x}-0000-4000-8000-{i:012x}", "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb",
         "memory_total": 40 * GiB, "memory_used": 0} for i in range(instances)])


def test_mig_devices_each_serve_a_worker_of_their_own(machine) -> None:
    inventory = machine([mig_a100(0, 2), fake_gpu(1)])
    result = plan({"gpu": 1}, 3, inventory)
    hosts = [w.devices for w in result.workers]
    assert all(len(devices) == 1 for devices in hosts)
    assert sorted(d.uuid for (d,) in hosts) == sorted(d.uuid for d in inventory.devices)
    problem = result.one_process_problem()
    assert "MIG device(s)" in problem and "mig-user-guide" in problem
    # A worker that is alone on its MIG device is fine in one process.
    assert plan({"gpu": 1}, 1, machine([mig_a100(0, 2)])).one_process_problem() is None


def test_never_two_mig_devices_in_one_worker(machine) -> None:
    inventory = machine([mig_a100(0, 2), fake_gpu(1), fake_gpu(2)])
    result = plan({"gpu": 2}, 1, inventory)
    assert [d.uuid for d in result.workers[0].devices] == [fake_gpu(1)["uuid"], fake_gpu(2)["uuid"]]
    with pytest.raises(PlanError) as caught:
        plan({"gpu": 2}, 2, inventory)
    message = str(caught.value)
    assert message.count("[a MIG device, which a worker can only have alone]") == 2
    with pytest.raises(PlanError):
        plan({"gpu": 2}, 1, machine([mig_a100(0, 4)]))


def test_shares_of_a_mig_device_are_planned_like_shares_of_a_gpu(machine) -> None:
    inventory = machine([mig_a100(0, 1)])
    result = plan({"gpu": 0.5}, 2, inventory)
    assert [w.devices[0].uuid for w in result.workers] == [inventory.devices[0].uuid] * 2
    assert result.workers[0].memory_limit == 20 * GiB
    assert result.one_process_problem() is None


def test_a_plan_that_cannot_fit_names_where_cuda_visible_devices_stopped(machine) -> None:
    inventory = machine(four_h100(), CUDA_VISIBLE_DEVICES="0,7,1")
    with pytest.raises(PlanError) as caught:
        plan({"gpu": 1}, 2, inventory)
    assert "CUDA stops at entry '7' (no device has ordinal 7 (ordinals are 0..3))" in str(caught.value)
