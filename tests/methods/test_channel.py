"""The channel method: schedules, the ratio search for a MACs target, depth blocks first, and apply() as a whole."""

from pathlib import Path

import pytest
import torch

from pruning.allocation.uniform import search_ratio
from pruning.arrays import load_split
from pruning.counting import count_macs
from pruning.data import Data, DataConfig, Split
from pruning.errors import GraphTraceError, PruningError
from pruning.methods import Context, channel
from pruning.zoo import build_model

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def data() -> Data:
    (x, y), (xt, yt) = load_split(DataConfig(), 0)
    return Data(Split(torch.from_numpy(x[:256]), torch.from_numpy(y[:256])),
                Split(torch.from_numpy(xt), torch.from_numpy(yt)), SHAPE, 10)


def _model(blocks=(1, 1, 1)):
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [8, 16, 32], "blocks": list(blocks)}, SHAPE, 10)


def _cfg(**kw) -> channel.Config:
    return channel.Config(**{"round_to": None, "step_finetune_epochs": 0, "calibration_batches": 1, **kw})


def _ctx(data: Data, tmp: Path | None = None) -> Context:
    return Context(data=data, seed=0, device="cpu", build=_model, latency_table=(tmp or Path("unused")) / "t.json",
                   opset=17)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "hessian", "bn_scale", "lamp", "random", "loss_change"])
def test_run_schedule_removes_channels_with_every_criterion(criterion, data):
    model = _model()
    dense_macs = count_macs(model, SHAPE)[0]
    _, steps, _ = channel.run_schedule(model, _cfg(criterion=criterion, ratio=0.5), 0.5, _ctx(data))
    assert steps[-1]["macs"] < 0.45 * dense_macs
    assert model.eval()(data.test.x[:3]).shape == (3, 10)


def test_run_schedule_records_decreasing_macs_when_iterative(data):
    history, steps, _ = channel.run_schedule(_model(), _cfg(ratio=0.6, iterative_steps=3, step_finetune_epochs=1),
                                             0.6, _ctx(data))
    macs = [s["macs"] for s in steps]
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert macs[0] > macs[1] > macs[2] > macs[3]
    assert len(history) > 0


def test_search_ratio_reaches_the_macs_target_without_touching_the_model(data):
    cfg = _cfg(ratio=None, target_macs_reduction=2.0)
    model = _model()
    dense_macs = count_macs(model, SHAPE)[0]
    ratio = search_ratio(lambda r: channel.macs_after(model, SHAPE, cfg, r, data.train, 0), dense_macs, 2.0)
    assert count_macs(model, SHAPE)[0] == dense_macs  # the search never touches the model
    _, steps, _ = channel.run_schedule(model, cfg, ratio, _ctx(data))
    assert 2.0 <= dense_macs / steps[-1]["macs"] < 2.3  # reached, and not by overshooting far
    assert 0.2 < ratio < 0.45


def test_search_ratio_names_the_target_when_it_is_out_of_reach(data):
    cfg = _cfg(ratio=None, target_macs_reduction=1000.0)
    model = _model()
    with pytest.raises(GraphTraceError, match="1000.0 is out of reach") as exc:
        search_ratio(lambda r: channel.macs_after(model, SHAPE, cfg, r, data.train, 0), count_macs(model, SHAPE)[0],
                     1000.0)
    assert exc.value.field == "target_macs_reduction"


def test_cubic_scheduler_front_loads_the_ratio_and_ends_at_it():
    ratios = channel.cubic_scheduler(0.8, 4)
    assert ratios[0] == 0 and ratios[-1] == pytest.approx(0.8)
    steps = [b - a for a, b in zip(ratios, ratios[1:], strict=False)]
    assert steps == sorted(steps, reverse=True) and steps[0] > 0.8 / 4  # more than linear at first


def test_run_schedule_follows_the_cubic_ratios_when_gradual(data):
    _, cubic, _ = channel.run_schedule(_model(), _cfg(ratio=0.6, iterative_steps=3, schedule="cubic"), 0.6, _ctx(data))
    assert [round(s["ratio"], 4) for s in cubic] == [0.0, round(0.6 * (1 - (2 / 3) ** 3), 4),
                                                     round(0.6 * (1 - (1 / 3) ** 3), 4), 0.6]
    _, linear, _ = channel.run_schedule(_model(), _cfg(ratio=0.6, iterative_steps=3), 0.6, _ctx(data))
    assert cubic[1]["macs"] < linear[1]["macs"]  # gradual removes more at the first step
    assert cubic[-1]["macs"] == linear[-1]["macs"]  # and ends at the same size


def test_apply_removes_blocks_then_channels_and_records_both_edits(data):
    model = _model(blocks=(2, 2, 1))
    dense_macs = count_macs(model, SHAPE)[0]
    cfg = _cfg(ratio=None, target_macs_reduction=2.5, depth_blocks=1)
    out = channel.apply(model, cfg, _ctx(data))
    assert [e["kind"] for e in out.edits] == ["blocks", "channels"]
    assert dense_macs / count_macs(out.model, SHAPE)[0] >= 2.5  # relative to the dense model, blocks included
    assert [s["step"] for s in out.steps] == [0, 1, 2] and out.steps[0]["macs"] > out.steps[1]["macs"] > \
        out.steps[2]["macs"]
    assert len(out.report["removed_blocks"]) == 1


def test_apply_names_the_field_when_more_blocks_are_asked_than_the_model_has(data):
    with pytest.raises(PruningError, match="cannot remove 9 blocks: the model has 3 removable") as exc:
        channel.apply(_model(), _cfg(ratio=0.3, depth_blocks=9), _ctx(data))
    assert exc.value.field == "depth_blocks"


@pytest.mark.parametrize(("kw", "needle"), [
    ({"ratio": 0.3, "target_macs_reduction": 2.0}, "set exactly one of ratio and target_macs_reduction"),
    ({"allocation": "latency", "ratio": 0.3, "target_speedup": 2.0}, "set ratio to null"),
    ({"ratio": 0.3, "target_speedup": 2.0}, "target_speedup needs allocation: latency"),
    ({"allocation": "latency", "ratio": None, "target_speedup": 2.0, "scope": "global"}, "scope must be uniform"),
])
def test_config_refuses_contradicting_targets_in_its_own_field_names(kw, needle):
    with pytest.raises(ValueError, match=needle):
        channel.Config(**kw)
