"""complexity-aware training's knobs: params.yaml ``prune:`` when ``method: complexity_aware``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pruning.schema import Section

RETRAIN_FROM_SCRATCH = 18  # with the 12-epoch search: the 30 epochs bench complexity gives every method


class Config(Section):
    """Train with Bernoulli gates on units and residual blocks; structures whose gate dies are removed."""

    method: Literal["complexity_aware"] = "complexity_aware"
    start: Literal["scratch", "dense"] = Field("scratch", description="scratch: train from the architecture's random "
                                               "init (the paper's setting) | dense: start from the trained dense model")
    strength: float = Field(1.0, ge=0, le=10_000, description="accuracy vs pruning level: loss (nats) the whole "
                            "network's complexity is worth; 0 = no pressure")
    layer_vs_unit: float = Field(0.5, ge=0, le=1, description="0 = only units pay for complexity, 1 = only residual "
                                 "blocks, 0.5 = both as their cost says")
    flops_vs_params: float = Field(0.0, ge=0, le=1, description="what complexity means: 0 = MACs (speed), 1 = "
                                   "parameters (size), between = a mix")
    target_macs_reduction: float | None = Field(None, gt=1, le=1_000, description="instead of a fixed strength: dense / "
                                                "pruned MACs to land on (strength adapted by dual ascent)")
    epochs: int = Field(12, ge=1, le=10_000, description="the search's training epochs (warm-up and settle included)")
    batch_size: int = Field(64, ge=2, le=65_536, description="batch size")
    lr: float = Field(0.05, gt=0, le=10, description="weights: SGD (Nesterov) learning rate, cosine schedule")
    momentum: float = Field(0.9, ge=0, lt=1, description="weights: SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1, description="weights: L2 weight decay")
    theta_lr: float = Field(0.05, gt=0, le=1_000, description="θ: projected SGD step (constant)")
    settle_epochs: int = Field(5, ge=0, le=10_000, description="last epochs (at most epochs - warmup - 1): each gate's θ "
                               "is annealed to the vertex it is decided to (θ >= 0.5, or the MACs target's cut) while "
                               "the weights adapt")
    theta_init: float = Field(0.95, gt=0, lt=1, description="every gate's θ at the start")
    warmup_epochs: int = Field(2, ge=0, le=10_000, description="epochs before θ learns (weights train with sampled gates)")
    prune_threshold: float = Field(1e-3, gt=0, lt=0.5, description="a structure whose θ is at or below this ...")
    patience: int = Field(3, ge=1, le=10_000, description="... at this many epoch-end checks in a row is removed")
    unit_gates: bool = Field(True, description="gate units (channels) — off: layer pruning only (ablation)")
    block_gates: bool = Field(True, description="gate residual blocks — off: unit pruning only (ablation)")
    estimator: Literal["relaxed", "arm"] = Field("relaxed", description="unbiased θ gradient: relaxed (one gate per "
                                                 "sample integrated over [0, 1]; one pass) | arm (two passes)")
    eval_gates: Literal["mode", "expectation"] = Field("mode", description="gates when evaluating during training: "
                                                       "mode (θ >= 0.5 -> 1, else 0: the network shipped) | expectation (θ)")
    dual_lr: float = Field(0.002, gt=0, le=10, description="with target_macs_reduction: step of log strength per "
                           "training step, times log(E[MACs] · target / MACs₀)")
    ignored_layers: list[str] = Field(default_factory=list, description="module names whose units are never gated "
                                      "(the classifier's outputs never are)")
    retrain_epochs: int | None = Field(None, ge=0, le=10_000, description="then: the found structure's weights "
                                       "initialised anew and trained this many epochs (SGD, lr, batch size as above; "
                                       f"0: the search's weights ship; null: {RETRAIN_FROM_SCRATCH} from scratch, 0 "
                                       "from a dense start)")

    @property
    def retrain(self) -> int:
        """Epochs of retraining the found structure: ``retrain_epochs``, or by ``start`` (from scratch the search's
        own weights lose accuracy, bench complexity; a dense start's weights are the user's)."""
        if self.retrain_epochs is not None:
            return self.retrain_epochs
        return RETRAIN_FROM_SCRATCH if self.start == "scratch" else 0
