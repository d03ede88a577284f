"""Complexity-aware training (Guenter & Sideris 2024) as a method package: the method itself (:mod:`.method`: its
Config and ``apply``), its Bernoulli gates on units and residual blocks (:mod:`.bernoulli`) and the unbiased estimators
of their probabilities' gradient (:mod:`.estimators`). This face only re-exports what :data:`pruning.methods.METHODS`
reads; nothing in the package imports it back."""

from pruning.methods.complexity_aware.method import Config, apply

__all__ = ["Config", "apply"]
