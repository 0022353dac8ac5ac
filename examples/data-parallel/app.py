"""One model over a worker's two GPUs with DataParallel: `python -m gpuserve serve app:DataParallel`."""

import gpuserve
import torch

FEATURES = 16


def build_model() -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


@gpuserve.service(resources={"gpu": 2})
class DataParallel:
    def __init__(self) -> None:
        ctx = gpuserve.context()
        self.device = ctx.device  # the first GPU: DataParallel gathers results there
        # torch.nn.DataParallel over the worker's GPUs; on the CPU fallback, the model on the CPU.
        self.model = ctx.backend.distribute(build_model(), ctx.planned)
        self.replicas = [f"cuda:{i}" for i in getattr(self.model, "device_ids", [])] or [str(self.device)]

    @gpuserve.api(batchable=True, max_batch_size=128)
    def predict(self, x: list[list[float]]) -> list[dict]:
        # DataParallel splits each batch along its rows over the GPUs.
        with torch.inference_mode():
            out = self.model(torch.tensor(x, dtype=torch.float32, device=self.device)).cpu()
        return [{"output": row.tolist(), "replicas": self.replicas} for row in out]
