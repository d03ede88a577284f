"""The prune stage: any method from the registry, written the same way; on a zoo model and on a user's own model."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pruning.checkpoint import load_model
from pruning.config import load_config
from pruning.counting import count_macs
from pruning.errors import ConfigError
from pruning.stages import BY_NAME
from pruning.stages.prune import run
from tests.conftest import write_params


class Residual(nn.Module):
    """A user's residual network (no zoo class): the adds are in its own forward."""

    def __init__(self, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                                  nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width))
                                    for _ in range(blocks))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean((2, 3)))


def test_prune_writes_the_model_the_steps_and_the_layer_table_for_the_default_method(trained_copy):
    cfg = load_config("params.yaml")
    result = run(cfg)
    assert result.method == "channel" and result.macs_reduction >= 2.0
    report = json.loads(Path(cfg.paths.prune_report).read_text())
    assert report["edits"] == ["channels"] and report["pruned_macs"] == result.pruned_macs
    assert any(row["out_after"] < row["out_before"] for row in report["layers"])
    model, record = load_model(cfg.paths.pruned_model)
    assert count_macs(model, (1, 8, 8))[0] == result.pruned_macs
    assert json.loads(Path(cfg.paths.latency_table).read_text())["version"]  # the persistent out exists whatever ran


def test_prune_removes_a_block_of_a_user_residual_network_with_the_depth_method(in_tmp):
    cfg = load_config(write_params(in_tmp, {"model": {"arch": "tests.stages.test_prune:Residual", "kwargs": {}},
                                            "train": {"epochs": 2}, "prune": {"method": "depth", "blocks": 1}}))
    for stage in ("prepare", "train"):
        BY_NAME[stage].fn(cfg)
    result = run(cfg)
    model, record = load_model(cfg.paths.pruned_model, cfg.model.arch)  # replayed on a freshly built user model
    (edit,) = record["edits"]
    assert edit["kind"] == "blocks" and edit["names"][0] in {"blocks.0", "blocks.1", "blocks.2"}
    assert result.pruned_macs < result.dense_macs
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in Residual().parameters()) - \
        sum(p.numel() for p in Residual().blocks[0].parameters())


def test_prune_turns_a_library_error_into_the_params_key(trained_copy):
    cfg = load_config(write_params(trained_copy, {"prune": {"ratio": None, "target_macs_reduction": 500.0}}))
    with pytest.raises(ConfigError, match=r'Invalid "prune.target_macs_reduction": 500.0 is out of reach'):
        run(cfg)
