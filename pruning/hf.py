"""A Hugging Face model saved with ``save_pretrained`` as the dense model (``model.arch: hf``, ``model.weights``: the
directory inside ``paths.weights_dir``), loaded offline.

Why a wrapper around ``from_pretrained``: the directory is untrusted input, as every model file is. Loading it must
not import or run code and must not reach the network, and the pipeline's model files must rebuild it without the
directory. So:

- the config is read as JSON and turned into its transformers config class by ``model_type`` (a ``config.json`` that
  asks for remote code — ``auto_map`` — is refused: only transformers' own classes are built);
- the model class is the config's ``architectures[0]``, looked up among transformers' own ``PreTrainedModel``
  classes;
- the weights are read from safetensors only (a pickled ``pytorch_model.bin`` is refused with how to convert it),
  in float32, with the hub's offline mode forced (:func:`force_offline`) and ``local_files_only``;
- ``model.kwargs`` are config overrides (e.g. ``num_labels: 4`` to put a new classification head on a pre-trained
  encoder: the weights that do not fit are initialised by transformers and named in one log line);
- a model file records the class and the whole config (:func:`record_kwargs`), from which :func:`from_record`
  builds the same model with no directory at all.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from pruning.errors import ModelError

log = logging.getLogger(__name__)

HF = "hf"  # model.arch of a save_pretrained directory
CONFIG = "config.json"
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def force_offline() -> None:
    """The Hugging Face hub's offline mode, for this process and its children: nothing is downloaded at run time (a
    user's code calling ``from_pretrained("bert-base-uncased")`` fails at once instead of fetching)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def directory_problem(path: Path) -> str | None:
    """What keeps ``path`` from being a ``save_pretrained`` directory this loader reads, or None."""
    if not path.is_dir():
        return f"{path} is not a directory (the hf architecture reads a save_pretrained directory)"
    if not (path / CONFIG).is_file():
        return f"{path} has no {CONFIG}: save the model with model.save_pretrained({str(path)!r})"
    if not any((path / name).is_file() for name in SAFETENSORS):
        pickled = any((path / name).is_file() for name in PICKLED)
        why = ("holds pickled weights only (pytorch_model.bin), which are not loaded here: resave them with "
               "save_pretrained(..., safe_serialization=True)" if pickled else
               f"has no weights ({' or '.join(SAFETENSORS)})")
        return f"{path} {why}"
    return None


def _config(path: Path, overrides: dict[str, Any]) -> tuple[Any, type]:
    """The config of ``path`` (overrides applied) and the model class it names."""
    try:
        raw = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path / CONFIG} is not readable JSON: {exc}", field="weights") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path / CONFIG} holds {type(raw).__name__}, not a config object", field="weights")
    return config_and_class(raw, overrides, str(path / CONFIG))


def config_and_class(raw: dict[str, Any], overrides: dict[str, Any], where: str) -> tuple[Any, type]:
    """A transformers config from a config dict (transformers' own config classes only) and its model class."""
    import transformers
    from transformers import CONFIG_MAPPING, PreTrainedModel

    if "auto_map" in raw:
        raise ModelError(f"{where} asks for code of its own (auto_map): only models of the transformers library are "
                         "loaded from a directory (a model file may not choose code to run); give your model as a "
                         "module:callable builder instead", field="weights")
    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"{where}: model_type {model_type!r} is not a transformers model type", field="weights")
    names = raw.get("architectures") or []
    name = names[0] if names and isinstance(names[0], str) else None
    cls = getattr(transformers, name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise ModelError(f"{where}: architectures {names!r} does not name a transformers model class (save the model "
                         "with save_pretrained, which writes it)", field="weights")
    try:
        config = CONFIG_MAPPING[model_type].from_dict({**raw, **overrides})
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"{where}: not a valid {model_type} config with the overrides {overrides}: {exc}",
                         field="kwargs") from None
    return config, cls


def from_directory(path: str | Path, overrides: dict[str, Any]) -> nn.Module:
    """The model saved in ``path``, in float32, offline; ModelError naming the directory when it is incomplete."""
    import torch

    path = Path(path)
    if problem := directory_problem(path):
        raise ModelError(problem, field="weights")
    config, cls = _config(path, overrides)
    force_offline()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar over tensors read in milliseconds, drawn even when piped to a file
    try:
        model, info = cls.from_pretrained(str(path), config=config, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False, dtype=torch.float32, output_loading_info=True,
                                          ignore_mismatched_sizes=bool(overrides))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: {cls.__name__}.from_pretrained failed: {first}", field="weights") from None
    new = sorted(set(info.get("missing_keys") or ()) | {k for k, *_ in info.get("mismatched_keys") or ()})
    if new:
        log.warning("%s: %d weights not in the directory, initialised anew (train them): %s", path, len(new),
                    ", ".join(new[:6]) + (" ..." if len(new) > 6 else ""))
    return model


def record_kwargs(model: nn.Module) -> dict[str, Any]:
    """What a model file records to rebuild ``model`` without its directory: its class and whole config."""
    return {"class": type(model).__name__, "config": json.loads(model.config.to_json_string(use_diff=False))}


def from_record(kwargs: dict[str, Any]) -> nn.Module:
    """The dense model a model file records (:func:`record_kwargs`), randomly initialised: its weights follow."""
    raw = kwargs.get("config")
    if not isinstance(raw, dict):
        raise ModelError("the hf architecture is built from a save_pretrained directory: name it", field="weights")
    config, cls = config_and_class(raw, {}, "the model file's config")
    if cls.__name__ != kwargs.get("class"):
        raise ModelError(f"the model file records class {kwargs.get('class')!r} but its config names {cls.__name__}")
    return cls(config)


def _built_shapes(model: nn.Module, overrides: dict[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The parameter shapes ``model``'s class builds from its config through its dict and back (as ``save_pretrained``
    + ``from_pretrained`` take it, validation included) with ``overrides``, on the meta device (no memory, no
    initialisation); None where transformers refuses the config."""
    import torch

    config = model.config
    try:
        again = type(config).from_dict({**config.to_dict(), **overrides})
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in type(model)(again).state_dict().items()}
    except Exception:  # noqa: BLE001 - transformers refuses the config (e.g. a hidden size no multiple of the heads)
        return None


def _is_hf(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "to_dict") and hasattr(model, "save_pretrained")


def rebuilds(model: nn.Module) -> bool | None:
    """Whether ``save_pretrained`` + ``from_pretrained`` would rebuild ``model``'s shapes: its config builds a model of
    its class with the same parameter shapes. None for a model that is no Hugging Face model."""
    if not _is_hf(model):
        return None
    return _built_shapes(model, {}) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def reads_head_dim(model: nn.Module) -> bool | None:
    """Whether ``model``'s class takes its head size from a stated ``config.head_dim`` (ViT's does, BERT's derives it
    from hidden size / heads whatever the config says): built with the head size stated as it is and doubled,
    compared. None for a model that is no Hugging Face model (or whose config has no head count and hidden size)."""
    config = getattr(model, "config", None)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if not _is_hf(model) or not isinstance(heads, int) or not isinstance(hidden, int):
        return None
    shapes = [_built_shapes(model, {"head_dim": head_dim}) for head_dim in (hidden // heads, 2 * (hidden // heads))]
    return None not in shapes and shapes[0] != shapes[1]
