"""Workers with GPUs of their own: `python -m gpuserve serve app:WorkerPerGpu`.

Each worker is a process that sees only its own GPU, as `cuda:0`. The
service touches no framework, so it serves on real GPUs and, for a demo, on
a fake inventory (`GPUSERVE_FAKE_GPUS=../fake-gpus.json`).
"""

import os

import gpuserve


@gpuserve.service(resources={"gpu": 1}, workers=2, isolation="process")
class WorkerPerGpu:
    @gpuserve.api
    def where(self) -> dict:
        ctx = gpuserve.context()
        gpu = ctx.planned[0]
        return {
            "worker": ctx.worker_index,
            "device": str(ctx.device),  # as the worker's framework spells it
            "gpu": gpu.uuid,
            "name": gpu.name,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
        }
