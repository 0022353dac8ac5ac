"""A server limited by `CUDA_VISIBLE_DEVICES`: `CUDA_VISIBLE_DEVICES=1,2 python -m gpuserve serve app:Limited`.

Two workers, one GPU each, as threads of the server. gpuserve plans only
inside the GPUs the variable lists and narrows its own visibility to the
planned ones before torch starts, so `cuda:0` and `cuda:1` here are exactly
the two planned GPUs.
"""

import os

import gpuserve
import torch


@gpuserve.service(resources={"gpu": 1}, workers=2)
class Limited:
    def __init__(self) -> None:
        ctx = gpuserve.context()
        self.device = ctx.device
        self.gpu = ctx.planned[0]
        self.scale = torch.tensor(2.0, device=self.device)

    @gpuserve.api
    def where(self, x: float = 1.0) -> dict:
        return {
            "worker": gpuserve.context().worker_index,
            "device": str(self.device),
            "gpu": self.gpu.uuid,
            "doubled": float(self.scale * x),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
