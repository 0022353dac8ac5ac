"""The network of the `resnet` scenario: ResNet-50, written out here, weights from a seed.

ResNet-50 as He et al. (2015) define it: a 7x7 stem, bottleneck blocks
[3, 4, 6, 3] of widths 64..512 (x4 out), global pooling, 1000 classes;
25.6 M parameters. No download: the weights come from `torch.manual_seed`,
and throughput does not depend on them. Each residual branch ends in a batch
norm whose scale starts at zero, so activations stay finite in fp16.

Inputs live on the device: a bank of `BANK` images made from a seed, which a
request names by index. The figures are then the network and the serving
path, not the transfer of pixels (which a real client would add on both sides).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from benchmarks.config import RESNET_BATCH

BANK = 2 * RESNET_BATCH
IMAGE_ENV = "BENCH_RESNET_IMAGE"  # image side in pixels; 224 unless set (smaller on the CPU)


class Bottleneck(nn.Module):
    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        outputs = width * 4
        self.branch = nn.Sequential(
            nn.Conv2d(inputs, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs),
        )
        nn.init.zeros_(self.branch[-1].weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


def resnet50(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    inputs = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            layers.append(Bottleneck(inputs, width, stride if block == 0 else 1))
            inputs = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, classes)]
    return nn.Sequential(*layers)


def dtype_for(device: Any) -> torch.dtype:
    """fp16 on GPUs; fp32 on the CPU, where half-precision convolutions are slow or missing."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def image_size() -> int:
    return int(os.environ.get(IMAGE_ENV, "224"))


def build(device: Any) -> nn.Module:
    torch.manual_seed(0)
    model = resnet50().eval()
    return model.to(device=device, dtype=dtype_for(device), memory_format=torch.channels_last)


def make_bank(device: Any) -> torch.Tensor:
    side = image_size()
    images = torch.randn(BANK, 3, side, side, generator=torch.Generator().manual_seed(1))
    return images.to(device=device, dtype=dtype_for(device), memory_format=torch.channels_last)


def classify(model: nn.Module, bank: torch.Tensor, ids: list[int]) -> list[int]:
    """The work of one batch, served or offline: the named images through the network, labels to the host."""
    with torch.inference_mode():
        index = torch.as_tensor(ids, device=bank.device) % BANK
        return model(bank[index]).argmax(1).tolist()
