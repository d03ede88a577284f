from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.data import Data, Split
from pruning.methods import Context, lottery
from pruning.methods.lottery import find_ticket
from pruning.methods.unstructured import prunable_layers
from pruning.training import Optim, fit

LotteryConfig = lottery.Config



def build() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))


def data(n: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    return Split(x, x.flatten(1)[:, :4].argmax(1))  # learnable: the class is the largest of the first 4 pixels


TRAIN, TEST = data(256, 0), data(128, 1)


def spy_on_fit(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """Record the model's state dict at the start of every fit() that find_ticket makes."""
    starts: list[dict[str, torch.Tensor]] = []
    real_fit = lottery.fit

    def fit(model, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(lottery, "fit", fit)
    return starts


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_find_ticket_reaches_compound_sparsity_when_pruning_a_share_of_the_rest_each_round(scope):
    cfg = LotteryConfig(rounds=3, prune_per_round=0.2, epochs=8, batch_size=64, scope=scope)
    result = find_ticket(build, TRAIN, TEST, cfg, seed=0)
    target = 1 - 0.8**3
    layers = prunable_layers(result.model)
    for name, m in layers:
        assert not hasattr(m, "weight_orig") and not m._forward_pre_hooks, name  # masks made permanent
        if scope == "layer":
            assert abs(int((m.weight == 0).sum()) - target * m.weight.numel()) <= 1, name
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    n = sum(m.weight.numel() for _, m in layers)
    assert abs(zeros - target * n) <= len(layers)  # within one weight of rounding per layer
    assert [r["round"] for r in result.rounds] == [1, 2, 3]
    for r in result.rounds:
        assert r["sparsity"] == pytest.approx(cfg.sparsity_after(r["round"]), abs=len(layers) / n)
        assert 0 <= r["accuracy"] <= 1 and r["loss"] > 0
    assert result.dense_accuracy > 0.5  # 4 classes: chance is 0.25


def test_find_ticket_resets_survivors_to_the_rewind_snapshot_when_each_round_starts(monkeypatch):
    starts = spy_on_fit(monkeypatch)
    cfg = LotteryConfig(rounds=2, prune_per_round=0.5, epochs=3, rewind_epoch=1, batch_size=64)
    result = find_ticket(build, TRAIN, TEST, cfg, seed=0)
    rewind = result.rewind_state
    torch.manual_seed(0)
    init = build().state_dict()
    assert not torch.equal(rewind["1.weight"], init["1.weight"])  # rewind_epoch 1: trained weights, not the init
    assert int(rewind["2.num_batches_tracked"]) == 4  # after exactly 1 epoch of 256 / 64 steps
    assert len(starts) == 1 + cfg.rounds  # the dense run, then one retraining per round
    for start in starts[1:]:
        for key, value in rewind.items():
            if key + "_orig" in start:  # a pruned weight: survivors rewound, the rest masked
                mask = start[key + "_mask"]
                assert torch.equal(start[key + "_orig"][mask == 1], value[mask == 1]), key
            else:  # biases, BatchNorm affine and running statistics
                assert torch.equal(start[key], value), key
    assert len(result.rounds) == cfg.rounds


def test_find_ticket_rewinds_to_the_initialisation_when_rewind_epoch_is_zero():
    result = find_ticket(build, TRAIN, TEST, LotteryConfig(rounds=1, epochs=1), seed=3)
    torch.manual_seed(3)
    init = build().state_dict()
    assert all(torch.equal(result.rewind_state[k], v) for k, v in init.items())


def test_find_ticket_starts_rounds_from_random_weights_when_reinit_is_set(monkeypatch):
    starts = spy_on_fit(monkeypatch)
    cfg = LotteryConfig(rounds=2, prune_per_round=0.5, epochs=2, reinit=True)
    result = find_ticket(build, TRAIN, TEST, cfg, seed=0)
    rewound = find_ticket(build, TRAIN, TEST, LotteryConfig(rounds=2, prune_per_round=0.5, epochs=2), seed=0)
    rewind = result.rewind_state
    for start in starts[1:1 + cfg.rounds]:
        mask = start["1.weight_mask"]
        assert not torch.allclose(start["1.weight_orig"][mask == 1], rewind["1.weight"][mask == 1])
    assert not torch.equal(starts[1]["1.weight_orig"], starts[2]["1.weight_orig"])  # a fresh draw per round
    assert result.dense_accuracy == rewound.dense_accuracy  # same dense run
    assert not torch.equal(result.model[1].weight, rewound.model[1].weight)
    assert len(result.rounds) == cfg.rounds


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"rounds": 0}, "rounds"), ({"prune_per_round": 1.0}, "prune_per_round"),
    ({"rewind_epoch": 5, "epochs": 5}, "rewind_epoch 5 must be below epochs"), ({"scope": "uniform"}, "scope"),
])
def test_lottery_config_raises_naming_the_field_when_it_is_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LotteryConfig(**{"rounds": 1, **kwargs})


def test_find_ticket_starts_from_a_trained_model_and_rewinds_to_its_initialisation():
    torch.manual_seed(0)
    trained = build()
    init = {k: v.clone() for k, v in trained.state_dict().items()}
    fit(trained, TRAIN, Optim(4, 64, 0.05), seed=0, desc="dense")
    cfg = LotteryConfig(rounds=1, prune_per_round=0.5, epochs=2)
    result = find_ticket(build, TRAIN, TEST, cfg, seed=0, trained=trained)
    assert all(torch.equal(result.rewind_state[k], v) for k, v in init.items())  # build() under the same seed
    assert result.model is trained  # no dense run of its own: the given model is the dense one
    assert result.rounds[0]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_apply_reports_one_step_per_round_and_a_mask_edit():
    torch.manual_seed(0)
    dense = build()
    fit(dense, TRAIN, Optim(3, 64, 0.05), seed=0, desc="dense")
    ctx = Context(data=Data(TRAIN, TEST, (1, 8, 8), 4), seed=0, device="cpu", build=build, latency_table=None,  # type: ignore[arg-type]
                  opset=17)
    out = lottery.apply(dense, LotteryConfig(rounds=2, prune_per_round=0.5, epochs=2), ctx)
    assert [s["step"] for s in out.steps] == [0, 1, 2]
    assert [round(s["ratio"], 2) for s in out.steps] == [0.0, 0.5, 0.75]
    assert out.steps[2]["macs"] == out.steps[0]["macs"]  # zeros in dense layers: the MACs count stays
    assert out.edits == [{"kind": "mask", "layers": ["1", "4"]}]
    assert out.report["weight_sparsity"] == pytest.approx(0.75, abs=0.01)
