"""A small MLP classifier whose weights come from a fixed seed: the same on every machine."""

import numpy as np
import torch

FEATURES = 8
CLASSES = 3
SEED = 0


def build_model() -> torch.nn.Module:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 32),
            torch.nn.ReLU(),
            torch.nn.Linear(32, CLASSES),
        )
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG as it was
    # float64 weights: any float32 input, however large, gives finite logits and so finite
    # probabilities (in float32, features near 3e38 overflow to inf, and softmax to NaN).
    return model.double().eval()


def predict(model: torch.nn.Module, rows: np.ndarray, device: torch.device) -> list[dict]:
    """The forward pass the service runs: `rows` is a float32 array [n, FEATURES]; one result per row."""
    with torch.inference_mode():
        logits = model(torch.from_numpy(rows).to(device, torch.float64))
        probabilities = logits.softmax(dim=1)
    labels = probabilities.argmax(dim=1).tolist()
    return [{"label": label, "probabilities": p} for label, p in zip(labels, probabilities.tolist())]
