import pytest
import torch

from pruning import surgery
from pruning.config import DataConfig, PruneConfig
from pruning.data import load_split
from pruning.errors import GraphTraceError
from pruning.schedule import Split, run_schedule, search_ratio
from pruning.zoo import build_model

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def splits():
    (x, y), (xt, yt) = load_split(DataConfig(), 0)
    return Split(torch.from_numpy(x[:256]), torch.from_numpy(y[:256])), Split(torch.from_numpy(xt), torch.from_numpy(yt))


def _model():
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [8, 16, 32]}, SHAPE, 10)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "hessian", "bn_scale", "lamp", "random", "loss_change"])
def test_run_schedule_removes_channels_with_every_criterion(criterion, splits):
    train, test = splits
    model = _model()
    dense_macs = surgery.count_macs(model, SHAPE)[0]
    cfg = PruneConfig(criterion=criterion, ratio=0.5, calibration_batches=1)
    result = run_schedule(model, SHAPE, cfg, 0.5, train, test, seed=0)
    assert result.steps[-1]["macs"] < 0.45 * dense_macs
    assert model.eval()(test.x[:3]).shape == (3, 10)


def test_run_schedule_records_decreasing_macs_when_iterative(splits):
    train, test = splits
    cfg = PruneConfig(ratio=0.6, iterative_steps=3, step_finetune_epochs=1)
    result = run_schedule(_model(), SHAPE, cfg, 0.6, train, test, seed=0)
    macs = [s["macs"] for s in result.steps]
    assert [s["step"] for s in result.steps] == [0, 1, 2, 3]
    assert macs[0] > macs[1] > macs[2] > macs[3]
    assert len(result.history) > 0


def test_search_ratio_reaches_the_macs_target(splits):
    train, test = splits
    cfg = PruneConfig(ratio=None, target_macs_reduction=2.0)
    model = _model()
    dense_macs = surgery.count_macs(model, SHAPE)[0]
    ratio = search_ratio(model, SHAPE, cfg, 2.0, train, seed=0)
    assert surgery.count_macs(model, SHAPE)[0] == dense_macs  # the search never touches the model
    result = run_schedule(model, SHAPE, cfg, ratio, train, test, seed=0)
    achieved = dense_macs / result.steps[-1]["macs"]
    assert 2.0 <= achieved < 2.3  # reached, and not by overshooting far
    assert 0.2 < ratio < 0.45


def test_search_ratio_raises_when_the_target_is_out_of_reach(splits):
    train, _ = splits
    cfg = PruneConfig(ratio=None, target_macs_reduction=1000.0)
    with pytest.raises(GraphTraceError, match="out of reach"):
        search_ratio(_model(), SHAPE, cfg, 1000.0, train, seed=0)


def test_cubic_scheduler_front_loads_the_ratio_and_ends_at_it():
    from pruning.schedule import cubic_scheduler

    ratios = cubic_scheduler(0.8, 4)
    assert ratios[0] == 0 and ratios[-1] == pytest.approx(0.8)
    steps = [b - a for a, b in zip(ratios, ratios[1:], strict=False)]
    assert steps == sorted(steps, reverse=True) and steps[0] > 0.8 / 4  # more than linear at first


def test_run_schedule_follows_the_cubic_ratios_when_gradual(splits):
    train, test = splits
    cfg = PruneConfig(ratio=0.6, iterative_steps=3, schedule="cubic")
    result = run_schedule(_model(), SHAPE, cfg, 0.6, train, test, seed=0)
    assert [round(s["ratio"], 4) for s in result.steps] == [0.0, round(0.6 * (1 - (2 / 3) ** 3), 4),
                                                            round(0.6 * (1 - (1 / 3) ** 3), 4), 0.6]
    linear = run_schedule(_model(), SHAPE, PruneConfig(ratio=0.6, iterative_steps=3), 0.6, train, test, seed=0)
    assert result.steps[1]["macs"] < linear.steps[1]["macs"]  # gradual removes more at the first step
    assert result.steps[-1]["macs"] == linear.steps[-1]["macs"]  # and ends at the same size
