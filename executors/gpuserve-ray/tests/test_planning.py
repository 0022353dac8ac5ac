"""The plan against a cluster's resources and Ray's names for GPU types, without a cluster."""

import pytest
from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

from gpuserve.plugin import PlanError, Resources, valid_gpu_types
from gpuserve_ray.accelerators import accelerator_type
from gpuserve_ray.cluster import Node, plan_on_cluster

# What NVML calls one card of each kind, and so what Ray's own detection names it.
NVML_NAMES = {
    "nvidia-h100": "NVIDIA H100 80GB HBM3", "nvidia-tesla-t4": "Tesla T4", "nvidia-v100": "Tesla V100-SXM2-16GB",
    "nvidia-a100": "NVIDIA A100-SXM4-80GB", "nvidia-l4": "NVIDIA L4", "nvidia-l40s": "NVIDIA L40S",
    "nvidia-a10g": "NVIDIA A10G", "nvidia-gh200": "NVIDIA GH200 480GB", "nvidia-rtx-a6000": "NVIDIA RTX A6000",
    "nvidia-rtx-4090": "NVIDIA GeForce RTX 4090",
}


@pytest.mark.parametrize("gpu_type", sorted(NVML_NAMES))
def test_gpu_types_take_the_name_rays_detection_gives_the_card(gpu_type):
    detected = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(NVML_NAMES[gpu_type])
    assert accelerator_type(gpu_type) == detected


def test_every_gpu_type_has_a_ray_name():
    assert all(accelerator_type(t) for t in valid_gpu_types())
    assert accelerator_type(None) is None


GiB = 2**30
NODES = [Node("a" * 16, "10.0.0.1", cpus=8, gpus=2, accelerator_types=("H100",), memory=64 * GiB),
         Node("b" * 16, "10.0.0.2", cpus=8, gpus=1, accelerator_types=("L4",), memory=16 * GiB)]


def plan(resources, workers, nodes=NODES, **kw):
    return plan_on_cluster(Resources.parse(resources), workers, nodes, where="10.0.0.1:6379", **kw)


def test_whole_gpus_of_a_type_fit_only_on_nodes_of_that_type():
    assert plan({"gpu": 1, "gpu_type": "nvidia-h100"}, 2).request.options() == {
        "num_gpus": 1, "num_cpus": 1, "accelerator_type": "H100"}
    with pytest.raises(PlanError) as error:
        plan({"gpu": 1, "gpu_type": "nvidia-h100"}, 3)
    message = str(error.value)
    assert "node 10.0.0.1 (aaaaaaaa): 2 GPU (H100), 8 CPU, 64.0 GiB memory: room for 2" in message
    assert "node 10.0.0.2 (bbbbbbbb): 1 GPU (L4), 8 CPU, 16.0 GiB memory: room for 0  [not H100]" in message
    assert "Write instead one of: workers=2; gpu=0.66; gpu=0 (CPU)" in message


def test_shares_pack_onto_each_gpu_and_cpus_bound_them_too():
    assert plan({"gpu": 0.25}, 12).request.num_gpus == 0.25  # 8 + 4 shares
    with pytest.raises(PlanError, match="room for 8"):
        plan({"gpu": 0.1}, 17)  # 30 shares, but 8 CPUs a node


def test_declared_memory_is_asked_of_ray_in_bytes_and_each_nodes_memory_bounds_the_replicas():
    fits = plan({"gpu": 0.5, "gpu_type": "nvidia-h100", "memory": "16GiB"}, 4)
    assert fits.request.options() == {"num_gpus": 0.5, "num_cpus": 1, "accelerator_type": "H100", "memory": 16 * GiB}
    assert "4 replica(s), each a Ray actor asking for num_gpus=0.5, accelerator_type=H100, num_cpus=1, memory=16.0 GiB; " \
        "Ray places them" in fits.lines
    assert "memory" not in plan({"gpu": 1}, 1).request.options()  # undeclared: Ray's default, none reserved
    with pytest.raises(PlanError) as error:
        plan({"gpu": 0.5, "gpu_type": "nvidia-h100", "memory": "17GiB"}, 4)  # 64 GiB holds three, GPUs four
    message = str(error.value)
    assert ("asked for 4 worker(s) x 0.5 GPU (type nvidia-h100, 17.0 GiB memory each), each an actor asking for "
            "num_gpus=0.5, accelerator_type=H100, num_cpus=1, memory=17.0 GiB.") in message
    assert "node 10.0.0.1 (aaaaaaaa): 2 GPU (H100), 8 CPU, 64.0 GiB memory: room for 3" in message
    assert "node 10.0.0.2 (bbbbbbbb): 1 GPU (L4), 8 CPU, 16.0 GiB memory: room for 0  [not H100; less than 17.0 GiB memory]" \
        in message
    assert message.endswith("Write instead one of: workers=3; memory='16384MiB'; gpu=0 (CPU)")


def test_a_cpu_service_that_declares_memory_is_placed_by_it():
    assert plan({"memory": "8GiB"}, 10).request.options() == {"num_gpus": 0, "num_cpus": 1, "memory": 8 * GiB}
    with pytest.raises(PlanError) as error:
        plan({"memory": "8GiB"}, 11)  # 8 + 2 by memory
    assert "asked for 11 worker(s) x 1 CPU (8.0 GiB memory each)" in str(error.value)
    assert "Write instead one of: workers=10; memory='5461MiB'; more CPUs or memory in the cluster" in str(error.value)
    falls_back = plan({"gpu": 1, "memory": "1GiB"}, 2, [Node("c" * 16, "10.0.0.3", cpus=4, gpus=0, memory=2 * GiB)])
    assert falls_back.fallback_reason and falls_back.request.options() == {"num_gpus": 0, "num_cpus": 1, "memory": GiB}


def test_no_gpu_in_the_cluster_falls_back_to_the_cpu_or_fails_when_gpus_are_required():
    cpus_only = [Node("c" * 16, "10.0.0.3", cpus=4, gpus=0)]
    fallback = plan({"gpu": 1}, 2, cpus_only)
    assert fallback.request.num_gpus == 0 and "has no GPU" in fallback.fallback_reason
    with pytest.raises(PlanError, match="GPUs are required"):
        plan({"gpu": 1}, 2, cpus_only, require_gpu=True)
