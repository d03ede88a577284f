"""Complexity-aware training (Guenter & Sideris 2024) as a method package: its knobs (:mod:`.config`), the method
(:mod:`.method`: the epochs of training and ``apply``), one training run's optimisation (:mod:`.run`), its Bernoulli
gates on units and residual blocks (:mod:`.bernoulli`) and the unbiased estimators of their probabilities' gradient
(:mod:`.estimators`). This face only re-exports what :data:`pruning.methods.METHODS` reads; nothing in the package
imports it back."""

from pruning.methods.complexity_aware.config import Config
from pruning.methods.complexity_aware.method import apply

__all__ = ["Config", "apply"]
