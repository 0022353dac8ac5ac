"""Two models on two GPUs of one worker: `python -m gpuserve serve app:TwoModels`."""

import gpuserve
import torch

FEATURES = 16


def build_model(seed: int, outputs: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(FEATURES, outputs)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model.eval()


def run(model: torch.nn.Module, rows: list[list[float]], device: torch.device) -> list[dict]:
    with torch.inference_mode():
        out = model(torch.tensor(rows, dtype=torch.float32, device=device)).cpu()
    return [{"output": row.tolist(), "device": str(device)} for row in out]


@gpuserve.service(resources={"gpu": 2})
class TwoModels:
    def __init__(self) -> None:
        ctx = gpuserve.context()
        # With one worker, cuda:0 and cuda:1 are exactly its two planned GPUs. On the
        # CPU fallback the worker has the CPU alone, and both models share it.
        self.first_device, self.second_device = ctx.devices if len(ctx.devices) == 2 else (ctx.device, ctx.device)
        self.first = build_model(seed=1, outputs=3).to(self.first_device)
        self.second = build_model(seed=2, outputs=2).to(self.second_device)

    @gpuserve.api(batchable=True, max_batch_size=64)
    def first_model(self, x: list[list[float]]) -> list[dict]:
        return run(self.first, x, self.first_device)

    @gpuserve.api(batchable=True, max_batch_size=64)
    def second_model(self, x: list[list[float]]) -> list[dict]:
        return run(self.second, x, self.second_device)
