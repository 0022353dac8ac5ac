"""A character-level language model whose weights are counted from `corpus.txt`: the same on every machine.

The model is a table of next-character log-probabilities for every context of
`CONTEXT` characters: 4-gram counts from the corpus, mixed with 3-, 2- and
1-gram counts so that a context the corpus never shows still has a guess. It
is built in milliseconds, needs no download and holds no randomness; `steps`
samples from it with one random generator per row, seeded by the request, so
a text depends only on its own prompt, seed and temperature, never on the
rows it shares a batch with.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import torch

import gpuserve

VOCAB = " abcdefghijklmnopqrstuvwxyz.,;:'!?-"  # anything else reads as a space
CONTEXT = 3  # characters the next one depends on
MIX = (0.85, 0.1, 0.04, 0.01)  # weights of the 4-, 3-, 2- and 1-gram estimates
CORPUS = Path(__file__).with_name("corpus.txt")
_INDEX = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    return [_INDEX.get(c, 0) for c in text.lower()]


class CharModel(torch.nn.Module):
    """Next-character log-probabilities for a batch of contexts: [rows, CONTEXT] ids -> [rows, len(VOCAB)]."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(log_probs.reshape(-1, len(VOCAB)))
        self.register_buffer("place", len(VOCAB) ** torch.arange(CONTEXT - 1, -1, -1))

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        return self.table((contexts * self.place).sum(1))


def build_model(corpus: Path = CORPUS) -> CharModel:
    """The model of `corpus`: n-gram counts turned into mixed log-probabilities."""
    size = len(VOCAB)
    ids = torch.tensor(encode(" ".join(corpus.read_text().split())))
    windows = ids.unfold(0, CONTEXT + 1, 1)  # [positions, CONTEXT + 1]: a context and the character after it
    estimate = torch.zeros((size,) * (CONTEXT + 1), dtype=torch.float64)
    for order, weight in zip(range(CONTEXT, -1, -1), MIX):  # order: characters of context used
        shape = (size,) * (order + 1)
        flat = torch.zeros(size ** (order + 1), dtype=torch.float64)
        place = size ** torch.arange(order, -1, -1)
        flat.index_add_(0, (windows[:, CONTEXT - order:] * place).sum(1), torch.ones(len(windows), dtype=torch.float64))
        counts = flat.reshape(shape)
        totals = counts.sum(-1, keepdim=True)
        probabilities = torch.where(totals > 0, counts / totals.clamp(min=1), 1.0 / size)
        estimate += weight * probabilities.reshape((1,) * (CONTEXT - order) + shape)
    return CharModel(estimate.log().float()).eval()


def steps(model: CharModel, prompts: list[str], lengths: list[int], seeds: list[int], temperatures: list[float],
          device: torch.device) -> Generator[list[str], list[int], None]:
    """Per step, the next character of every row still taking part (`END` once a row has its length).

    The value sent back after each step holds the positions, in what was yielded, of the rows that take part
    in the next one: the others (ended, or their client left) drop out of every tensor.
    """
    contexts = torch.tensor([encode((" " * CONTEXT + p)[-CONTEXT:]) for p in prompts], device=device)
    scale = torch.tensor(temperatures, device=device).unsqueeze(1)
    randomness = [torch.Generator().manual_seed(seed) for seed in seeds]
    left = list(lengths)
    while len(left):
        with torch.inference_mode():
            logits = model(contexts) / scale
        # Gumbel noise from each row's own generator: argmax then samples from softmax(logits).
        uniform = torch.stack([torch.rand(len(VOCAB), generator=g, dtype=torch.float64) for g in randomness])
        noise = (-(-uniform.clamp(min=1e-12).log()).log()).float().to(device)
        chosen = (logits + noise).argmax(1)
        keep = yield [VOCAB[c] if n > 0 else gpuserve.END for c, n in zip(chosen.tolist(), left)]
        rows = torch.tensor(keep, dtype=torch.long, device=device)
        contexts = torch.cat([contexts[:, 1:], chosen.unsqueeze(1)], 1)[rows]
        scale = scale[rows]
        randomness = [randomness[k] for k in keep]
        left = [left[k] - 1 for k in keep]


def complete(model: CharModel, prompt: str, length: int, seed: int = 0, temperature: float = 0.8,
             device: torch.device | None = None) -> str:
    """The text `steps` makes for one row, whole: what its stream sends, one character after another."""
    text = []
    run = steps(model, [prompt], [length], [seed], [temperature], device or torch.device("cpu"))
    values = next(run)
    while values[0] is not gpuserve.END:
        text.append(values[0])
        values = run.send([0])
    run.close()
    return "".join(text)
