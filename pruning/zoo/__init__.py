"""The model zoo: an explicit registry of builders, plus ``module:callable`` for user models.

Every builder is called as ``builder(in_channels=..., num_classes=..., **kwargs)``; a user callable gets only
``**kwargs`` (it knows its own input).
"""

from __future__ import annotations

import functools
import importlib
import inspect
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


def resolve_callable(spec: str) -> Any:
    """Import ``module:callable`` (ModelError with ``field="arch"`` if that fails)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"{spec!r} is not 'module:callable'", field="arch")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a configuration problem here
        raise ModelError(f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})", field="arch") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no attribute {attr!r}", field="arch")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{spec!r} is not callable", field="arch")
    return obj


def check_builder(spec: str, builder: Any) -> Any:
    """A model builder must be an ``nn.Module`` class or a Python function (or a method / partial of one): a built-in
    such as ``os:system`` or ``sys:exit``, or a class that builds something else, is refused before it is called."""
    target = builder.func if isinstance(builder, functools.partial) else builder
    if isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise ModelError(f"{spec!r} is the class {target.__name__}, not a torch.nn.Module class", field="arch")
    elif not (inspect.isfunction(target) or inspect.ismethod(target)):
        raise ModelError(f"{spec!r} is {type(target).__name__}, not a Python function or an nn.Module class "
                         "(a built-in such as os:system is never a model builder)", field="arch")
    return builder


def build_model(arch: str, kwargs: dict[str, Any], input_shape: tuple[int, ...] | None, num_classes: int) -> nn.Module:
    """Build a dense model from the zoo (``arch`` a name) or from user code (``arch`` = ``module:callable``).

    Args:
        arch: zoo name or ``module:callable``.
        kwargs: keyword arguments for the builder.
        input_shape: per-sample input shape, e.g. (1, 8, 8); its first entry is the channel count.
        num_classes: classifier width.
    """
    if ":" in arch:
        builder = check_builder(arch, resolve_callable(arch))
        call_kwargs = dict(kwargs)
    elif arch in ZOO:
        if input_shape is None:
            raise ModelError(f"zoo architecture {arch!r} takes one float input (batch, channels, ...); this data has "
                             'several inputs or integer ones: give your own "module:callable"', field="arch")
        builder = ZOO[arch]
        call_kwargs = {"in_channels": input_shape[0], "num_classes": num_classes, **kwargs}
    else:
        raise ModelError(f'unknown architecture {arch!r} (zoo: {", ".join(ZOO)}; or give "module:callable")', field="arch")
    try:
        model = builder(**call_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {arch!r} with arguments {kwargs}: {exc}", field="kwargs") from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - user code: its failure (even sys.exit) is a one-line error
        raise ModelError(f"{arch!r} failed to build the model: {type(exc).__name__}: {exc}", field="arch") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{arch!r} returned {type(model).__name__}, not a torch.nn.Module", field="arch")
    return model
