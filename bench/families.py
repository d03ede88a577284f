"""ImageNet-shape (3x224x224) architecture families in plain torch, random init, for ``python -m bench.latency``.

They stand for the networks users bring (not zoo entries: nothing in ``pruning/`` knows them). Each builder is
``fn(num_classes=1000)``; the input is any 3-channel image of at least 32x32 (every net ends in a global pool).
Weights are PyTorch's default init and BatchNorm statistics the defaults (mean 0, variance 1): latency does not depend
on them, but in eval mode the deep nets' activations shrink towards zero, so a test that compares outputs should
re-estimate the statistics first (``pruning.training.recalibrate_batchnorm``).

- ``efficientnet_b0_like``: EfficientNet-B0 (Tan & Le 2019, Table 1), full depth (1, 2, 2, 3, 3, 4, 1): MBConv1/MBConv6
  with depthwise 3x3/5x5, squeeze-excitation (squeeze = block input / 4), SiLU.
- ``resnext_like``: ResNeXt-50 (32x4d) bottlenecks (Xie et al. 2017) with 2 blocks per stage instead of (3, 4, 6, 3),
  so that batch-1 latency stays below ResNet-50's.
- ``densenet_like``: DenseNet-121 (Huang et al. 2017) layers (growth 32) and transitions with (4, 8, 12, 8) layers per
  block instead of (6, 12, 24, 16).
- ``shufflenetv2_like``: ShuffleNetV2 1.0x (Ma et al. 2018), full depth (4, 8, 4): channel split (chunk) + channel
  shuffle (view / transpose / reshape). torch-pruning 1.6.1 cannot prune it (its graph analysis of the shuffle divides
  by zero once three units are chained), so bench latency lists its pruned variants as not built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
            ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class Classifier(nn.Sequential):
    """Global average pool, flatten, linear."""

    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(cin, num_classes))


# --- EfficientNet-B0 ------------------------------------------------------------------------------------------------

class SqueezeExcitation(nn.Module):
    """x * sigmoid(expand(SiLU(reduce(avgpool(x))))): per-channel gates from the global context."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped at expansion 1), depthwise kxk, SE (squeeze = input/4), 1x1 project;
    the shortcut where stride 1 and the width is unchanged."""

    def __init__(self, cin: int, cout: int, expansion: int, k: int, stride: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = conv_bn(cin, mid, act=nn.SiLU) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, k, stride, groups=mid, act=nn.SiLU)
        self.se = SqueezeExcitation(mid, max(1, cin // 4))
        self.project = conv_bn(mid, cout, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


# Tan & Le 2019, Table 1: (expansion, kernel, stride of the first block, width, repeats)
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNetLike(nn.Module):
    """``stages``: (expansion, kernel, stride, width, repeats) per stage; B0's by default."""

    def __init__(self, num_classes: int = 1000, stages: tuple[tuple[int, ...], ...] = EFFICIENTNET_B0) -> None:
        super().__init__()
        blocks: list[nn.Module] = [conv_bn(3, 32, 3, 2, act=nn.SiLU)]
        cin = 32
        for expansion, k, stride, width, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, width, expansion, k, stride if i == 0 else 1))
                cin = width
        blocks.append(conv_bn(cin, 1280, act=nn.SiLU))
        self.features = nn.Sequential(*blocks)
        self.classifier = Classifier(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- ResNeXt ----------------------------------------------------------------------------------------------------------

class ResNeXtBlock(nn.Module):
    """1x1 reduce to ``width`` -> 3x3 grouped (32 groups, stride here) -> 1x1 expand to ``cout``, plus the shortcut."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, width), conv_bn(width, width, 3, stride, groups=groups),
                                  conv_bn(width, cout, act=None))
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNeXtLike(nn.Module):
    """ResNeXt-50 32x4d: stage widths 128/256/512/1024 (32 groups of 4d), outputs 256/512/1024/2048."""

    def __init__(self, num_classes: int = 1000, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, n in enumerate(blocks):
            width, cout = 128 * 2**i, 256 * 2**i
            for j in range(n):
                layers.append(ResNeXtBlock(cin, width, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- DenseNet ---------------------------------------------------------------------------------------------------------

def bn_relu_conv(cin: int, cout: int, k: int) -> nn.Sequential:
    """DenseNet's pre-activation order: BN, ReLU, then the convolution."""
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, 1, k // 2, bias=False))


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4 x growth) - BN-ReLU-3x3 (growth), concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(bn_relu_conv(cin, 4 * growth, 1), bn_relu_conv(4 * growth, growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNetLike(nn.Module):
    """DenseNet-121's stem, growth 32, transitions halving the channels (BN-ReLU-1x1, 2x2 average pool)."""

    def __init__(self, num_classes: int = 1000, blocks: tuple[int, ...] = (4, 8, 12, 8), growth: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if i < len(blocks) - 1:
                layers += [bn_relu_conv(cin, cin // 2, 1), nn.AvgPool2d(2, 2)]
                cin //= 2
        layers += [nn.BatchNorm2d(cin), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- ShuffleNetV2 -----------------------------------------------------------------------------------------------------

def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """(b, g * c, h, w) -> (b, c * g, h, w), interleaving the groups' channels."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """Stride 1: split the channels in two halves, transform one (1x1, depthwise 3x3, 1x1), concatenate, shuffle.
    Stride 2: both branches see the whole input (the left one depthwise + 1x1), so the width doubles."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        self.left = nn.Sequential(conv_bn(cin, cin, 3, stride, groups=cin, act=None), conv_bn(cin, half)) \
            if stride == 2 else nn.Identity()
        inner = cin if stride == 2 else half
        self.right = nn.Sequential(conv_bn(inner, half), conv_bn(half, half, 3, stride, groups=half, act=None),
                                   conv_bn(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], 1)
        else:
            out = torch.cat([self.left(x), self.right(x)], 1)
        return channel_shuffle(out)


class ShuffleNetV2Like(nn.Module):
    """ShuffleNetV2 1.0x: stem 24, stages of (4, 8, 4) units of widths 116/232/464, conv5 1024."""

    def __init__(self, num_classes: int = 1000, repeats: tuple[int, ...] = (4, 8, 4),
                 widths: tuple[int, ...] = (116, 232, 464)) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)]
        cin = 24
        for n, width in zip(repeats, widths, strict=True):
            for j in range(n):
                layers.append(ShuffleUnit(cin, width, 2 if j == 0 else 1))
                cin = width
        layers.append(conv_bn(cin, 1024))
        self.features = nn.Sequential(*layers)
        self.classifier = Classifier(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def efficientnet_b0_like(num_classes: int = 1000) -> nn.Module:
    return EfficientNetLike(num_classes)


def resnext_like(num_classes: int = 1000) -> nn.Module:
    return ResNeXtLike(num_classes)


def densenet_like(num_classes: int = 1000) -> nn.Module:
    return DenseNetLike(num_classes)


def shufflenetv2_like(num_classes: int = 1000) -> nn.Module:
    return ShuffleNetV2Like(num_classes)


FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "efficientnet_b0_like": efficientnet_b0_like,
    "resnext_like": resnext_like,
    "densenet_like": densenet_like,
    "shufflenetv2_like": shufflenetv2_like,
}
