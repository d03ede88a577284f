"""The examples (examples/<name>/: a workspace of its own) stay runnable: their params.yaml load and name every key
the root's does (a key added to the pipeline reaches them), their dvc.yaml and pruning/ are the repository's, and
their model runs on their data. The examples' full runs are documented in docs/examples.md; the same paths (a
transformer through the flow and every stage) are tested end to end in tests/e2e/test_transformer_pipeline.py."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

from pruning.config import load_config
from pruning.data import forward
from pruning.stages import prepare
from pruning.stages.common import prepared_data
from pruning.zoo import build_model
from tests.conftest import REPO

EXAMPLES = sorted(p.parent.name for p in (REPO / "examples").glob("*/params.yaml"))


def _keys(node: object, prefix: str = "") -> set[str]:
    if not isinstance(node, dict) or prefix.endswith(("kwargs", "space", "gates")):
        return {prefix}
    return {k for key, value in node.items() for k in _keys(value, f"{prefix}.{key}" if prefix else key)}


def test_there_are_the_two_examples_the_docs_describe():
    assert EXAMPLES == ["text-topics", "vit-digits"]
    text = (REPO / "docs" / "examples.md").read_text()
    assert all(f"examples/{name}" in text for name in EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_is_a_workspace_of_the_repository_s_pipeline_with_every_key(name, tmp_path, monkeypatch):
    where = REPO / "examples" / name
    assert (where / "dvc.yaml").resolve() == (REPO / "dvc.yaml").resolve()
    assert (where / "pruning").resolve() == (REPO / "pruning").resolve()
    root = yaml.safe_load((REPO / "params.yaml").read_text())
    mine = yaml.safe_load((where / "params.yaml").read_text())
    assert _keys(mine) == _keys(root)
    monkeypatch.syspath_prepend(str(where))
    cfg = load_config(where / "params.yaml")
    assert cfg.train.optimizer == cfg.finetune.optimizer == "adamw"
    small = cfg.model_copy(update={"data": cfg.data.model_copy(update={"kwargs": {**cfg.data.kwargs, "train": 40,
                                                                               "test": 20}}
                                                               if cfg.data.kwargs else {})})
    prepare.run(small, tmp_path)
    data = prepared_data(small, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg.model.arch, cfg.model.kwargs, data.input_shape, data.num_classes).eval()
    with torch.no_grad():
        assert forward(model, data.example).shape == (1, data.num_classes)
    for module in [m for m in sys.modules if m in ("vit", "topics")]:
        monkeypatch.delitem(sys.modules, module)
