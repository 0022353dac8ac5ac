"""Services that say where Ray placed them and what gpuserve sees there."""

import os
import time

import numpy as np
import ray

import gpuserve


def where() -> dict:
    time.sleep(0.05)  # long enough for concurrent requests to spread over the replicas
    ctx = gpuserve.context()
    from gpuserve_fake_gpu import applied_memory_caps

    return {
        "worker": ctx.worker_index,
        "node": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": ctx.device,
        "planned": [d.uuid for d in ctx.planned],
        "memory_limit": ctx.memory_limit,
        "memory_caps": applied_memory_caps(),
        "assigned": ray.get_runtime_context().get_assigned_resources(),  # what Ray reserved for this actor
    }


@gpuserve.service(backend="fake-gpu", resources={"gpu": 1, "gpu_type": "nvidia-h100", "memory": "1GiB"}, workers=2)
class Whole:
    @gpuserve.api
    def where(self) -> dict:
        return where()


@gpuserve.service(backend="fake-gpu", resources={"gpu": 0.5}, workers=4)
class Shared:
    @gpuserve.api
    def where(self) -> dict:
        return where()


@gpuserve.service(backend="fake-gpu", resources={"gpu": 1, "gpu_type": "nvidia-a100"})
class WrongType:
    @gpuserve.api
    def where(self) -> dict:
        return where()


@gpuserve.service(backend="cpu")
class Arrays:
    @gpuserve.api
    def inspect(self, x) -> dict:  # unannotated: the array passes as it arrives
        try:
            x += 1  # what user code may not do with an array from Ray's object store
            wrote = "wrote in place"
        except ValueError as exc:
            wrote = str(exc)
        return {"writeable": x.flags.writeable, "sum": float(x.sum()), "in_place": wrote,
                "copy_sum": float((np.array(x) + 1).sum())}


@gpuserve.service(backend="cpu")
class Naps:
    @gpuserve.api
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds
