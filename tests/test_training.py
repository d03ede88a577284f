import torch
import torch.nn.functional as F
from torch import nn

from pruning.data import Split
from pruning.training import Callback, Optim, distillation_loss, evaluate, fit, recalibrate_batchnorm, resolve_device
from pruning.zoo import build_model


def _separable(n: int = 256) -> Split:
    torch.manual_seed(0)
    x = torch.randn(n, 1, 8, 8)
    return Split(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def _small() -> nn.Module:
    torch.manual_seed(1)
    return build_model("resnet", {"widths": [4, 8, 8]}, (1, 8, 8), 2)


def test_distillation_loss_is_cross_entropy_when_alpha_is_zero():
    logits, teacher = torch.randn(8, 10), torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert torch.allclose(distillation_loss(logits, y, teacher, 4.0, 0.0), F.cross_entropy(logits, y))


def test_distillation_loss_soft_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    assert distillation_loss(logits, y, logits.clone(), 4.0, 1.0).abs() < 1e-6
    assert distillation_loss(logits, y, torch.randn(8, 10), 4.0, 1.0) > 0.01


def test_fit_learns_a_separable_problem_and_is_reproducible_when_seeded():
    data = _separable()
    histories = []
    for _ in range(2):
        model = _small()
        histories.append(fit(model, data, Optim(6, 32, 0.05), seed=0, desc="t"))
        accuracy, _ = evaluate(model, data)
    assert histories[0] == histories[1]
    assert histories[0][-1]["loss"] < histories[0][0]["loss"]
    assert accuracy > 0.9


class _Recorder(Callback):
    """Counts every hook, checks their order, and adds a penalty on the classifier's weights."""

    def __init__(self, weight: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.weight = weight

    def before_batch(self, model, step):
        self.calls.append(("before", step))

    def extra_loss(self, model, batch, logits):
        self.calls.append(("loss", len(batch.x)))
        return self.weight * model.classifier.weight.abs().sum() if self.weight else None

    def after_backward(self, model, step):
        assert model.classifier.weight.grad is not None  # gradients exist, the step has not happened
        self.calls.append(("backward", step))

    def on_step(self, model, step):
        self.calls.append(("step", step))

    def on_epoch(self, model, record):
        record["seen_steps"] = sum(1 for c in self.calls if c[0] == "step")


def test_fit_calls_every_callback_hook_in_order_and_lets_a_callback_add_a_loss_term():
    data = _separable(128)
    rec = _Recorder()
    history = fit(_small(), data, Optim(2, 32, 0.05), seed=0, desc="t", callbacks=[rec])
    steps = [s for kind, s in rec.calls if kind == "step"]
    assert steps == list(range(1, 9))  # 128 / 32 = 4 steps per epoch, counted over the whole run
    assert rec.calls[:4] == [("before", 1), ("loss", 32), ("backward", 1), ("step", 1)]
    assert [h["seen_steps"] for h in history] == [4, 8]  # on_epoch may extend the epoch record
    # an L1 penalty on the classifier shrinks its weights compared with the same run without it
    plain, penalised = _small(), _small()
    fit(plain, data, Optim(3, 32, 0.05), seed=0, desc="t")
    fit(penalised, data, Optim(3, 32, 0.05), seed=0, desc="t", callbacks=[_Recorder(weight=0.05)])
    assert penalised.classifier.weight.abs().sum() < 0.8 * plain.classifier.weight.abs().sum()


def test_fit_gives_a_parameter_group_its_own_learning_rate_and_no_weight_decay():
    data = _separable(128)
    model = _small()
    frozen = list(model.stem.parameters())
    before = [p.detach().clone() for p in frozen]
    others = [p for p in model.parameters() if all(p is not q for q in frozen)]
    fit(model, data, Optim(2, 32, 0.05), seed=0, desc="t",
        param_groups=[{"params": frozen, "lr": 0.0, "weight_decay": 0.0}, {"params": others}])
    assert all(torch.equal(a, b) for a, b in zip(before, frozen, strict=True))  # lr 0 and no decay: unchanged
    assert not torch.equal(model.classifier.weight, _small().classifier.weight)  # the rest trained


def test_resolve_device_picks_cuda_only_when_there_is_one():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_recalibrate_batchnorm_replaces_stale_statistics():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(100.0)
    x = torch.randn(128, 1, 8, 8) * 2 + 3
    recalibrate_batchnorm(model, Split(x, torch.zeros(128, dtype=torch.long)), n_batches=2, seed=0)
    with torch.no_grad():
        expected = model[0](x).mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected, atol=1e-4)
    assert model[1].momentum == 0.1 and not model.training


def test_fit_logs_one_info_line_per_epoch_for_output_that_is_not_a_terminal(caplog):
    """A redirected run (CI, nohup, Prefect's log) sees no progress bar: the epochs must reach the log."""
    import logging

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    split = Split(torch.randn(32, 1, 4), torch.randint(0, 2, (32,)))
    with caplog.at_level(logging.INFO, logger="pruning.training"):
        fit(model, split, Optim(3, 8, 0.1), seed=0, desc="train dense")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [line.split(":")[0] for line in lines] == [f"train dense epoch {e}/3" for e in (1, 2, 3)]
    assert all("loss=" in line and "train_accuracy=" in line for line in lines)
