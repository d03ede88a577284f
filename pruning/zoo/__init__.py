"""The model zoo: an explicit registry of builders, plus ``module:callable`` for user models.

Every builder is called as ``builder(in_channels=..., num_classes=..., **kwargs)``; a user callable gets only
``**kwargs`` (it knows its own input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pruning.errors import ModelError
from pruning.zoo.imagenet import mobilenetv2_imagenet, resnet50
from pruning.zoo.mobilenet import mobilenetv2
from pruning.zoo.resnet import resnet, resnet1d
from pruning.zoo.vgg import vgg

ZOO: dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet,
    "resnet1d": resnet1d,
    "vgg": vgg,
    "mobilenetv2": mobilenetv2,
    "resnet50": resnet50,  # ImageNet shape, 3x224x224
    "mobilenetv2_imagenet": mobilenetv2_imagenet,  # ImageNet shape, 3x224x224
}


def build_model(arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a dense model from the zoo (``arch`` a name) or from user code (``arch`` = ``module:callable``).

    Args:
        arch: zoo name or ``module:callable``.
        kwargs: keyword arguments for the builder (params.yaml ``model.kwargs``).
        input_shape: per-sample input shape, e.g. (1, 8, 8); its first entry is the channel count.
        num_classes: classifier width.
    """
    from pruning.config import resolve_callable

    if ":" in arch:
        builder = resolve_callable(arch, '"model.arch"')
        call_kwargs = dict(kwargs)
    elif arch in ZOO:
        builder = ZOO[arch]
        call_kwargs = {"in_channels": input_shape[0], "num_classes": num_classes, **kwargs}
    else:
        raise ModelError(f'Unknown "model.arch" {arch!r} (zoo: {", ".join(ZOO)}; or give "module:callable")')
    try:
        model = builder(**call_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f'Cannot build model.arch {arch!r} with model.kwargs {kwargs}: {exc}') from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
