"""One model on one GPU: `python -m gpuserve serve app:OneGpu` from this folder."""

import gpuserve
import torch

FEATURES = 16


def build_model() -> torch.nn.Module:
    """A small classifier whose weights come from a fixed seed: the same everywhere."""
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def predict(model: torch.nn.Module, rows: list[list[float]], device: torch.device) -> list[dict]:
    with torch.inference_mode():
        scores = model(torch.tensor(rows, dtype=torch.float32, device=device))
    return [{"label": int(row.argmax()), "scores": row.tolist(), "device": str(device)} for row in scores.cpu()]


@gpuserve.service(resources={"gpu": 1})
class OneGpu:
    def __init__(self) -> None:
        # This worker's GPU, cuda:0; the CPU when gpuserve falls back to it (it says so at start).
        self.device = gpuserve.context().device
        self.model = build_model().to(self.device)

    @gpuserve.api(batchable=True, max_batch_size=64, max_latency_ms=50)
    def predict(self, x: list[list[float]]) -> list[dict]:
        # Batchable: `x` holds the rows of every queued request; one answer per row.
        return predict(self.model, x, self.device)
