"""ImageNet-shape (3x224x224) ResNet-50 and MobileNetV2 in plain torch, for latency work (random init is fine).

ResNet-50: He et al. 2016, bottleneck blocks [3, 4, 6, 3], 4.1 GMACs, 25.6 M params (as torchvision's resnet50).
MobileNetV2: Sandler et al. 2018, Table 2 (width 1.0), 0.30 GMACs, 3.5 M params.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.zoo.mobilenet import MobileNetV2


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, as in torchvision's "ResNet v1.5") -> 1x1 expand x4, plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet50(nn.Module):
    """7x7/2 stem + 3x3/2 max-pool, four stages of bottlenecks, global average pool, linear classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        cin = 64
        for i, n in enumerate(blocks):
            width = 64 * 2**i
            for j in range(n):
                layers.append(Bottleneck(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet50(in_channels: int = 3, num_classes: int = 1000) -> ResNet50:
    """ResNet-50 for 224x224 inputs."""
    return ResNet50(in_channels, num_classes)


# Sandler et al. 2018, Table 2: (expansion t, width c, repeats n, stride s)
MOBILENETV2_IMAGENET = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1))


def mobilenetv2_imagenet(in_channels: int = 3, num_classes: int = 1000) -> MobileNetV2:
    """MobileNetV2 (width 1.0) for 224x224 inputs: a stride-2 stem, then the paper's table."""
    model = MobileNetV2(in_channels, num_classes, stem=32, settings=[list(r) for r in MOBILENETV2_IMAGENET], last=1280)
    stem = model.features[0][0]  # the small-image variant keeps the stem at stride 1; ImageNet's is stride 2
    model.features[0][0] = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 2, 1, bias=False)
    return model
