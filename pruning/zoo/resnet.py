"""CIFAR-style ResNet (He et al. 2016, §4.2) for small images: a 3x3 stem, stages of basic blocks, global pooling."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, conv: type[nn.Module] = nn.Conv2d,
                 norm: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, ``len(widths)`` stages (the first at stride 1, the rest at stride 2), average pool, linear classifier.

    Works for 2D (``dims=2``: x of shape (N, C, H, W)) and 1D (``dims=1``: (N, C, L)) inputs.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 64),
                 blocks: tuple[int, ...] = (1, 1, 1), dims: int = 2) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} must have the same length")
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.stem = nn.Sequential(conv(in_channels, widths[0], 3, 1, 1, bias=False), norm(widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, conv, norm))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


def resnet(in_channels: int, num_classes: int, widths: list[int] = (16, 32, 64), blocks: list[int] = (1, 1, 1)) -> ResNet:
    """2D CIFAR-style ResNet; the default (1, 1, 1) blocks is a ResNet-8."""
    return ResNet(in_channels, num_classes, tuple(widths), tuple(blocks), dims=2)


def resnet1d(in_channels: int, num_classes: int, widths: list[int] = (32, 64, 128), blocks: list[int] = (2, 2, 2)) -> ResNet:
    """1D ResNet for sequences such as mnist1d (x: (N, 1, 40))."""
    return ResNet(in_channels, num_classes, tuple(widths), tuple(blocks), dims=1)
