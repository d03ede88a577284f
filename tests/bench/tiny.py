"""A network small enough for the benchmarks' smoke tests (seconds, not minutes), with what their searches look at:
inverted residual blocks (expansion, depthwise, projection, a residual add), a downsampling stage, a classifier. The
benchmarks' figures come from the real architectures (``python -m bench.latency``); the tests check the machinery."""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6())


class Block(nn.Module):
    def __init__(self, width: int, expand: int = 4) -> None:
        super().__init__()
        hidden = width * expand
        self.body = nn.Sequential(_cbr(width, hidden), _cbr(hidden, hidden, 3, groups=hidden),
                                  nn.Conv2d(hidden, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TinyMobile(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 32, 3, 2), Block(32), _cbr(32, 64, 3, 2), Block(64))
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def tiny_mobile(num_classes: int = 10) -> nn.Module:
    return TinyMobile(num_classes)
