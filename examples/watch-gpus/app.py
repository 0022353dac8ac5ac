"""A service that keeps its GPU busy, to watch while it serves: `python -m gpuserve serve app:Busy`.

Watch it from another terminal with `python -m gpuserve devices --watch 1`
(memory and utilisation per GPU), or scrape `GET /metrics` (the planned GPUs'
`gpuserve_gpu_*` gauges beside the serving signals).
"""

import gpuserve
import torch

SIZE = 512  # each request multiplies SIZE x SIZE matrices ROUNDS times
ROUNDS = 16


def build_matrix() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(SIZE, SIZE, generator=generator) / SIZE**0.5


def checksum(seed: int, matrix: torch.Tensor) -> float:
    x = torch.full((SIZE, SIZE), seed / SIZE, device=matrix.device)
    for _ in range(ROUNDS):
        x = torch.tanh(x @ matrix)
    return float(x.sum())


@gpuserve.service(resources={"gpu": 1})
class Busy:
    def __init__(self) -> None:
        self.device = gpuserve.context().device
        self.matrix = build_matrix().to(self.device)

    @gpuserve.api(batchable=True, max_batch_size=16)
    def work(self, seed: list[int]) -> list[dict]:
        with torch.inference_mode():
            return [{"checksum": checksum(value, self.matrix), "device": str(self.device)} for value in seed]
