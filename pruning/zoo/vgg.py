"""VGG-style plain network (Simonyan & Zisserman 2015): conv3x3-BN-ReLU stacks, max-pool between stages."""

from __future__ import annotations

import torch
from torch import nn


class VGG(nn.Module):
    """``cfg`` lists output widths; ``"M"`` is a 2x2 max-pool. Ends with global average pool + linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, cfg: list[int | str]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg(in_channels: int, num_classes: int, cfg: list[int | str] = (32, 32, "M", 64, 64, "M", 128, 128)) -> VGG:
    """A small VGG (the default suits 8x8 to 32x32 inputs)."""
    return VGG(in_channels, num_classes, list(cfg))
