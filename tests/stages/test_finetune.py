import json
from pathlib import Path

from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.stages.finetune import run


def test_finetune_recovers_accuracy_and_keeps_the_architecture(finished_copy):
    cfg = load_config("params.yaml")
    result = run(cfg)
    assert result.accuracy > result.accuracy_before
    pruned, record = load_model(cfg.paths.pruned_model)
    tuned, tuned_record = load_model(cfg.paths.finetuned_model)
    assert tuned_record["edits"] == record["edits"] and tuned_record["meta"]["stage"] == "finetune"
    assert [p.shape for p in tuned.parameters()] == [p.shape for p in pruned.parameters()]
    assert json.loads(Path(cfg.paths.finetune_report).read_text())["distill"] is True
