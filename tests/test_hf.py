"""A Hugging Face model saved with save_pretrained as the dense model (``model.arch: hf``): loaded offline from the
directory with its weights, config overrides applied, rebuilt by a model file without the directory; a directory that
is incomplete, pickled or asks for code of its own is one line naming model.weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from pruning import checkpoint, hf
from pruning.config import load_config
from pruning.errors import ConfigError, ModelError
from tests.conftest import write_params
from tests.test_transformers import CLASSES, _tokens, bert


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A user's workspace with a BERT classifier saved in weights/bert."""
    root = tmp_path_factory.mktemp("ws")
    torch.manual_seed(0)
    model = bert().eval()
    model.save_pretrained(root / "weights" / "bert")
    return root, model


def _params(root: Path, weights: str = "weights/bert", **model) -> Path:
    path = write_params(root, {"model": {"arch": "hf", "kwargs": {}, "weights": weights, **model}})
    return path


def test_the_directory_is_the_dense_model_offline_and_a_model_file_rebuilds_it_without_it(saved, tmp_path,
                                                                                           monkeypatch):
    root, model = saved
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_config(_params(root))  # the directory passes the params check
    loaded = hf.from_directory(root / "weights" / "bert", {}).eval()
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # nothing downloads from here on, the user's code included
    x = _tokens(4).x
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    path = tmp_path / "dense.pt"
    checkpoint.save_model(path, loaded, arch=hf.HF, kwargs=hf.record_kwargs(loaded), input_shape=None,
                          num_classes=CLASSES, example=x)
    (root / "weights" / "bert").rename(root / "weights" / "gone")  # the model file needs no directory
    try:
        # a model file naming hf builds transformers' own class from its config: allowed without a configured arch
        rebuilt, record = checkpoint.load_model(path)
    finally:
        (root / "weights" / "gone").rename(root / "weights" / "bert")
    assert record["kwargs"]["class"] == "BertForSequenceClassification"
    with torch.no_grad():
        assert torch.equal(rebuilt(**x).logits, model(**x).logits)


def test_config_overrides_put_a_new_head_on_the_saved_encoder_and_name_the_new_weights(saved, caplog):
    root, model = saved
    with caplog.at_level("WARNING", logger="pruning.hf"):
        loaded = hf.from_directory(root / "weights" / "bert", {"num_labels": 7})
    assert loaded.classifier.out_features == 7
    assert torch.equal(loaded.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    assert "initialised anew" in caplog.text and "classifier.weight" in caplog.text


def _broken(root: Path, name: str, damage) -> str:
    d = root / "weights" / name
    d.mkdir(parents=True)
    damage(d)
    return f"weights/{name}"


def _config(d: Path, **extra) -> None:
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"], **extra}))
    (d / "model.safetensors").write_bytes(b"")


CASES = {
    "no_config": (lambda d: (d / "model.safetensors").write_bytes(b""), "has no config.json"),
    "pickled": (lambda d: ((d / "config.json").write_text("{}"), (d / "pytorch_model.bin").write_bytes(b"x")),
                "pickled weights only"),
    "no_weights": (lambda d: (d / "config.json").write_text("{}"), "has no weights"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_incomplete_directory_is_refused_when_params_load_naming_the_key(saved, case):
    root, _ = saved
    damage, message = CASES[case]
    with pytest.raises(ConfigError, match=f'"model.weights".*{message}') as err:
        load_config(_params(root, _broken(root, case, damage)))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("extra", "message"), [
    ({"auto_map": {"AutoModel": "evil.Model"}}, "asks for code of its own"),
    ({"model_type": "not-a-model"}, "is not a transformers model type"),
    ({"architectures": ["os.system"]}, "does not name a transformers model class"),
    ({"architectures": ["BertConfig"]}, "does not name a transformers model class"),
])
def test_a_config_that_names_code_outside_transformers_is_refused_before_anything_runs(saved, extra, message):
    root, _ = saved
    weights = _broken(root, f"odd{abs(hash(json.dumps(extra)))}", lambda d: _config(d, **extra))
    with pytest.raises(ModelError, match=message) as err:
        hf.from_directory(root / weights, {})
    assert err.value.field == "weights"


def test_hf_without_a_directory_and_a_file_for_a_directory_are_one_line(saved):
    root, _ = saved
    params = yaml.safe_load(_params(root).read_text())
    params["model"]["weights"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match='"model.weights".*needs the save_pretrained directory'):
        load_config(root / "params.yaml")
    (root / "weights" / "file.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match='"model.weights".*not a directory'):
        load_config(_params(root, "weights/file.safetensors"))
