"""A torch service that reports the intra-op threads its replica was given."""

from __future__ import annotations

import torch

import gpuserve


@gpuserve.service()
class Threads:
    def __init__(self) -> None:
        self.device = gpuserve.context().device

    @gpuserve.api
    def threads(self) -> dict:
        return {"torch": torch.get_num_threads(), "context": gpuserve.context().cpu_threads,
                "device": str(self.device)}


@gpuserve.service(isolation="process")
class ThreadsProcess(Threads):
    pass
