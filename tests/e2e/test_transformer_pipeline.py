"""Transformers through the whole pipeline with the channel method's default config: a BERT text classifier a user
saved with save_pretrained (with its tokenizer) and a tokenised text Dataset of theirs, through the Prefect flow and
then `dvc repro`; a ViT on the bundled digits and a grouped-query-attention decoder, every stage as the flow runs it,
recorded for DVC."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch
import yaml

from pruning import attention, checkpoint
from tests.conftest import REPO
from tests.e2e.conftest import PREFECT
from tests.golden import git

TEXT = REPO / "examples" / "text-topics" / "topics.py"
# what a transformer user changes besides data and model: AdamW at a transformer's learning rate; everything of the
# method (prune:) is its default
ADAMW = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.01}


def _text_workspace(root: Path, monkeypatch: pytest.MonkeyPatch, save) -> None:
    """The example's data module in the workspace (importable from it, as DVC's stages import it), and ``save(module,
    directory)`` writing the user's model with the tokenizer into weights/model."""
    shutil.copy(TEXT, root / "topics.py")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "topics", raising=False)
    save(importlib.import_module("topics"), str(root / "weights" / "model"))


def _params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update({"prune": {"method": "channel"}, "quantize": {"mode": "auto", "calibration_samples": 64},
                   "gates": {"macs": {"metric": "macs_reduction", "op": ">=", "threshold": 1.3},
                             "parity": {"metric": "parity_score", "op": "<=", "threshold": 1.0}}, **sections})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("add", "-A", cwd=root)
    git("commit", "-qm", "my transformer", cwd=root)


def _nothing_to_do(repro: str) -> bool:
    """`dvc repro` ran nothing: prepare (always run: it checks its own outputs) found them unchanged, no other stage
    ran."""
    return "prepare unchanged" in repro and repro.count("Running stage") == 1


def _heads(root: Path) -> list[tuple[int, int]]:
    model, _ = checkpoint.load_model(root / "models" / "finetuned.pt")  # hf: rebuilt without the directory
    return [(a.heads, a.kv_heads) for a in attention.find(model)]


@PREFECT
def test_a_saved_bert_and_tokenised_text_go_through_the_flow_and_dvc_with_the_default_method(harness, repo,
                                                                                              monkeypatch):
    from flows.pipeline import pipeline
    from tests.e2e.test_dvc import DVC, _run

    _text_workspace(repo, monkeypatch, lambda m, d: m.save_pretrained(d, hidden=32, layers=2, heads=4, intermediate=64))
    _params(repo, data={"source": "topics:datasets", "path": "weights/model",
                        "kwargs": {"train": 800, "test": 200, "length": 16}},
            model={"arch": "hf", "kwargs": {}, "weights": "weights/model"},
            train={"epochs": 5, "batch_size": 32, **ADAMW}, finetune={"epochs": 1, **ADAMW},
            registry={"model_name": "text-bert"}, evaluate={"batch_size": 16, "warmup": 1, "repeats": 3, "rounds": 1,
                                                            "sequence_length": 24})

    result = pipeline(repo=str(repo))
    assert all(result["ran"].values()) and result["gates"]["passed"] is True
    assert result["promotion"]["model_name"] == "text-bert" and result["promotion"]["alias"] == "champion"
    trained = json.loads((repo / "reports/train.json").read_text())
    assert trained["accuracy"] > 0.5  # four topics: AdamW trains it (SGD at the CNN default does not)
    prune = json.loads((repo / "reports/prune.json").read_text())
    assert [(r["heads"], r["keep"]) for r in prune["head_plan"]] == [(4, 3), (4, 3)]  # 0.35 of 4: one head each
    assert _heads(repo) == [(3, 3), (3, 3)]
    # BertConfig derives the head size: the hidden size followed the heads (4 x 8 -> 3 x 8), so its config says it
    assert prune["save_pretrained_reloads"] is True
    assert {r["keep"] for r in prune["channel_plan"] if r["channels"] == 32} == {24}
    assert json.loads((repo / "reports/quantize.json").read_text())["mode"] == "dynamic"  # no convolutions
    graph = onnx.load(str(repo / "models" / "pruned.onnx")).graph
    assert {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.input} == \
        {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert json.loads((repo / "reports/latency.json").read_text())["sequence_length"] == 24  # as asked, not 16
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["macs_reduction"] >= 1.3 and metrics["parity_score"] <= 1.0

    assert _nothing_to_do(_run(*DVC, "repro", cwd=repo))  # the flow left DVC nothing to do


@pytest.mark.parametrize("family", ["vit_on_digits", "gqa_decoder_on_text"])
def test_a_vit_and_a_grouped_query_decoder_go_through_every_stage_with_the_default_method(family, tmp_path,
                                                                                           monkeypatch):
    import transformers

    from tests.e2e.test_dvc import DVC, _run
    from tests.golden import init_repo, run_recorded

    root = init_repo(tmp_path / "ws")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    if family == "vit_on_digits":
        torch.manual_seed(0)
        config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=10)
        transformers.ViTForImageClassification(config).save_pretrained(root / "weights" / "model")
        data = {"source": "digits"}
    else:
        def decoder(module, directory: str) -> None:
            torch.manual_seed(0)
            config = transformers.MistralConfig(vocab_size=len(module.vocabulary()), hidden_size=32,
                                                num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                                head_dim=8, intermediate_size=64, max_position_embeddings=64,
                                                num_labels=4, pad_token_id=0)
            transformers.MistralForSequenceClassification(config).save_pretrained(directory)
            module.tokenizer(directory)

        _text_workspace(root, monkeypatch, decoder)
        data = {"source": "topics:datasets", "path": "weights/model",
                "kwargs": {"train": 96, "test": 48, "length": 12}}
    _params(root, data=data, model={"arch": "hf", "kwargs": {}, "weights": "weights/model"},
            train={"epochs": 1, "batch_size": 32, **ADAMW}, finetune={"epochs": 1, **ADAMW})

    run_recorded(root)
    gates = json.loads((root / "reports/gates.json").read_text())
    assert gates["passed"] is True, gates
    heads = _heads(root)
    # ViT: 4 heads, one goes; the decoder: 8 query heads over 2 key/value heads, 0.35 rounded to one per group
    assert heads == ([(3, 3), (3, 3)] if family == "vit_on_digits" else [(6, 2), (6, 2)])
    # ViT's config states the head size it reads; Mistral's states it always: save_pretrained would reload both
    assert json.loads((root / "reports/prune.json").read_text())["save_pretrained_reloads"] is True
    # no CNN: dynamic INT8 (a ViT's patch embedding is one convolution among many matrix products)
    assert json.loads((root / "reports/quantize.json").read_text())["mode"] == "dynamic"
    assert _nothing_to_do(_run(*DVC, "repro", cwd=root))  # every stage recorded as dvc repro records it
