"""A tiny net with every kind of Bernoulli gate: unit gates per torch-pruning group (a residual stage, a block's inner
channels, a depthwise convolution's) and a block gate; shared by the gates' and the estimators' tests."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from pruning import dependency
from pruning.methods.complexity_aware import bernoulli

SHAPE = (2, 12)


class Tiny(nn.Module):
    """A stem, one residual block (an internal group and the stage group), a depthwise conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, bias=False), nn.BatchNorm1d(2), nn.ReLU())
        self.body = nn.Sequential(nn.Conv1d(2, 2, 3, padding=1, bias=False), nn.BatchNorm1d(2), nn.ReLU(),
                                  nn.Conv1d(2, 2, 1, bias=False), nn.BatchNorm1d(2))
        self.dw = nn.Conv1d(2, 2, 3, padding=1, groups=2)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(self.dw(x).mean(-1))



@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    model = Tiny()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so gates after BatchNorm matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    model.eval()  # per-sample losses independent of the batch: the expectation is over the gates only
    g = bernoulli.build(model, SHAPE, dependency.ignored_modules(model, []))
    g.attach(model)
    return model, g


def all_configurations(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))

