"""The streaming example: `python -m gpuserve serve app:TextGenerator` from this folder.

A character-level text generator (`model.py`) served with batched streaming:
requests that wait together run as one batch, each step makes the next
character of every row at once, and each client receives its own characters as
they are made. A row that has its length, or whose client left, drops out of
the next step. On a machine without a GPU, gpuserve serves it on the CPU and
says so once at startup.
"""

from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

import gpuserve
from model import build_model, steps

Length = Annotated[int, Field(ge=1, le=100_000)]
Temperature = Annotated[float, Field(gt=0, le=5)]


@gpuserve.service(resources={"gpu": 1})
class TextGenerator:
    def __init__(self) -> None:
        self.device = gpuserve.context().device  # a torch.device: cuda:0 or cpu
        self.model = build_model().to(self.device)

    @gpuserve.api(batchable=True, max_batch_size=16)
    def generate(self, prompt: list[str], length: list[Length] = 200, seed: list[int] = 0,
                 temperature: list[Temperature] = 0.8) -> Iterator[list[str]]:
        """The text that follows `prompt`, one character per event: `length` of them, sampled with `seed`."""
        yield from steps(self.model, prompt, length, seed, temperature, self.device)
