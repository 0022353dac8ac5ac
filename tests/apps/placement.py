"""Services that report where gpuserve put them, for placement tests on fake GPUs."""

import os

import gpuserve
from gpuserve_fake_gpu import applied_memory_caps, current_fake_device


def where():
    ctx = gpuserve.context()
    return {
        "worker": ctx.worker_index,
        "device": str(ctx.device),
        "devices": [str(d) for d in ctx.devices],
        "uuids": [d.uuid for d in ctx.planned],
        "memory_limit": ctx.memory_limit,
        "process_memory_caps": applied_memory_caps(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


@gpuserve.service(resources={"gpu": 1}, workers=2, backend="fake-gpu")
class TwoWorkers:
    @gpuserve.api
    def where(self):
        return where()


@gpuserve.service(resources={"gpu": 2}, workers=2, backend="fake-gpu", isolation="process")
class TwoProcessWorkers:
    def __init__(self) -> None:
        # What the seed's code does: address the worker's GPUs as cuda:0 and cuda:1.
        self.seen_at_init = where()

    @gpuserve.api
    def where(self):
        return {**where(), "at_init": self.seen_at_init}


@gpuserve.service(resources={"gpu": 0.5}, workers=2, backend="fake-gpu", isolation="thread")
class HalfGpuEachAsThreads:
    @gpuserve.api
    def where(self):
        return where()


@gpuserve.service(resources={"gpu": 0.5}, workers=2, backend="fake-gpu")
class HalfGpuEach:
    @gpuserve.api
    def where(self):
        return where()


@gpuserve.service(resources={"gpu": 1}, workers=2, backend="fake-gpu")
class CurrentDevice:
    """Reports which fake GPU the backend made current in the executor thread."""

    def __init__(self) -> None:
        self.current_at_init = current_fake_device().uuid

    @gpuserve.api
    def where(self):
        return {**where(), "current": current_fake_device().uuid, "current_at_init": self.current_at_init}


@gpuserve.service(resources={"gpu": 1}, workers=2)
class Unnamed:
    """No backend named: `serve` chooses one (fake-gpu, on a fake inventory)."""

    @gpuserve.api
    def where(self):
        return where()
