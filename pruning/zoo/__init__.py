"""The model zoo: an explicit registry of builders, plus ``module:callable`` for user models.

Every builder is called as ``builder(in_channels=..., num_classes=..., **kwargs)``; a user callable gets only
``**kwargs`` (it knows its own input).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from pruning.errors import ModelError
from pruning.hf import HF, from_record
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
        with user_code() as interrupted:
            module = importlib.import_module(module_name)
    except BaseException as exc:  # any import-time failure of user code (sys.exit too) is a configuration problem here
        if interrupted(exc):
            raise
        raise ModelError(f"cannot import module {module_name!r} ({what_failed(exc)})", field="arch") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"module {module_name!r} has no attribute {attr!r}", field="arch")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"{spec!r} is not callable", field="arch")
    return obj


@contextlib.contextmanager
def user_code() -> Iterator[Callable[[BaseException], bool]]:
    """Run the user's code (an import, a builder, a data callable) noting each SIGINT that arrives meanwhile (the
    handler in place still runs). Yields ``interrupted(exc)``: whether ``exc`` is the user's Ctrl-C, to re-raise, and
    not the code's own failure (a module that raises KeyboardInterrupt or calls sys.exit is a one-line error, exit
    2). Signals reach the main thread only: elsewhere a KeyboardInterrupt is always the code's own."""
    seen: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    watch = threading.current_thread() is threading.main_thread() and previous is not signal.SIG_IGN

    def note(signum: int, frame: Any) -> None:
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)  # Python's default raises KeyboardInterrupt here
        else:  # SIG_DFL (or a handler not set from Python): die of the signal, as without this watch
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)

    if watch:
        signal.signal(signal.SIGINT, note)
    try:
        yield lambda exc: isinstance(exc, KeyboardInterrupt) and bool(seen)
    finally:
        if watch:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def what_failed(exc: BaseException) -> str:
    """What user code did, in a few words: "it called sys.exit(3)", "it raised KeyboardInterrupt", "ValueError: x"."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({'' if exc.code is None else repr(exc.code)})"
    if isinstance(exc, KeyboardInterrupt):
        return "it raised KeyboardInterrupt"
    return f"{type(exc).__name__}: {exc}"


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
    if arch == HF:  # a save_pretrained directory, rebuilt from the class and config a model file records
        return from_record(kwargs)
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
        raise ModelError(f'unknown architecture {arch!r} (zoo: {", ".join(ZOO)}; {HF}: a save_pretrained directory; '
                         'or give "module:callable")', field="arch")
    try:
        with user_code() as interrupted:
            model = builder(**call_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {arch!r} with arguments {kwargs}: {exc}", field="kwargs") from None
    except BaseException as exc:  # noqa: BLE001 - user code: its failure (even sys.exit) is a one-line error
        if interrupted(exc):
            raise
        raise ModelError(f"{arch!r} failed to build the model: {type(exc).__name__}: {exc}", field="arch") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{arch!r} returned {type(model).__name__}, not a torch.nn.Module", field="arch")
    return model
