import json
from pathlib import Path

import torch

from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.stages.finetune import run
from pruning.stages.prune import run as prune
from tests.conftest import write_params


def test_finetune_recovers_accuracy_and_keeps_the_architecture(finished_copy):
    cfg = load_config("params.yaml")
    result = run(cfg)
    assert result.accuracy > result.accuracy_before
    pruned, record = load_model(cfg.paths.pruned_model)
    tuned, tuned_record = load_model(cfg.paths.finetuned_model)
    assert tuned_record["edits"] == record["edits"] and tuned_record["meta"]["stage"] == "finetune"
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in pruned.parameters()]
    assert json.loads(Path(cfg.paths.finetune_report).read_text())["distill"] is True


def test_finetune_keeps_the_zeros_of_an_unstructured_model(finished_copy):
    cfg = load_config(write_params(finished_copy, {"prune": {"method": "unstructured", "sparsity": 0.8}}))
    prune(cfg)
    run(cfg)
    pruned, _ = load_model(cfg.paths.pruned_model)
    tuned, _ = load_model(cfg.paths.finetuned_model)
    for (name, a), b in zip(pruned.named_parameters(), tuned.parameters(), strict=True):
        if a.dim() > 1:
            assert torch.all(b[a == 0] == 0), name  # every zeroed weight is still zero
    assert any(not torch.equal(a, b) for a, b in zip(pruned.parameters(), tuned.parameters(), strict=True))
