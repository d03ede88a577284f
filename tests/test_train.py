import torch
import torch.nn.functional as F
from torch import nn

from pruning.train import Optim, distillation_loss, evaluate, fit, recalibrate_batchnorm
from pruning.zoo import build_model


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
    torch.manual_seed(0)
    x = torch.randn(256, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    histories = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_model("resnet", {"widths": [4, 8, 8]}, (1, 8, 8), 2)
        histories.append(fit(model, x, y, Optim(6, 32, 0.05), seed=0, desc="t"))
        accuracy, _ = evaluate(model, x, y)
    assert histories[0] == histories[1]
    assert histories[0][-1]["loss"] < histories[0][0]["loss"]
    assert accuracy > 0.9


def test_recalibrate_batchnorm_replaces_stale_statistics():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(100.0)
    x = torch.randn(128, 1, 8, 8) * 2 + 3
    recalibrate_batchnorm(model, x, batches=2, batch_size=64, seed=0)
    with torch.no_grad():
        expected = model[0](x).mean(dim=(0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected, atol=1e-4)
    assert model[1].momentum == 0.1 and not model.training
