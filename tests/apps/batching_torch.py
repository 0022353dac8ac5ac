"""A small torch MLP served with batching; each result says the size of its batch."""

import time

import torch

import gpuserve

FEATURES = 16


@gpuserve.service(backend="torch")
class Mlp:
    def __init__(self) -> None:
        torch.set_num_threads(1)  # several replicas share two cores
        self.device = gpuserve.context().device
        generator = torch.Generator().manual_seed(0)
        layers = [torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)]
        for layer in layers[::2]:  # every replica the same model: weights and biases from one seed
            torch.nn.init.normal_(layer.weight, generator=generator)
            torch.nn.init.normal_(layer.bias, generator=generator)
        self.model = torch.nn.Sequential(*layers).to(self.device).eval()

    @gpuserve.api(batchable=True, max_batch_size=64)
    def predict(self, x: list[list[float]]) -> list[dict]:
        with torch.inference_mode():
            labels = self.model(torch.tensor(x, device=self.device)).argmax(1).tolist()
        time.sleep(0.01)  # a device's fixed cost per batch: requests queue up behind it
        device = gpuserve.context().planned[0].label
        return [{"label": label, "batch": len(x), "device": device} for label in labels]
