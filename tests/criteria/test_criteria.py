"""The criteria registry: the one list of names, what each builds, what each reads from data."""

import typing

import pytest
import torch
import torch_pruning as tp
from torch_pruning._helpers import to_plain_idxs

from pruning import criteria
from pruning.criteria.oracle import LossChangeImportance
from pruning.data import Split
from pruning.methods import channel
from pruning.zoo import build_model

SHAPE = (1, 8, 8)


def _model():
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [8, 16, 16]}, SHAPE, 10).eval()


def _data() -> Split:
    torch.manual_seed(0)
    return Split(torch.randn(128, *SHAPE), torch.randint(0, 10, (128,)))


def test_the_config_literal_is_derived_from_the_registry():
    assert typing.get_args(criteria.CriterionName) == tuple(criteria.CRITERIA)
    assert typing.get_args(channel.Config.model_fields["criterion"].annotation) == tuple(criteria.CRITERIA)


def test_make_builds_a_fresh_torch_pruning_importance_for_every_name_and_refuses_others():
    for name in criteria.CRITERIA:
        imp = criteria.make(name)
        assert isinstance(imp, tp.importance.Importance) and imp is not criteria.make(name)
    assert isinstance(criteria.make("loss_change", criteria.Limits(7, 1.0)), LossChangeImportance)
    assert criteria.make("loss_change", criteria.Limits(7, 1.0)).max_channels == 7
    with pytest.raises(ValueError, match="unknown criterion 'magic'"):
        criteria.make("magic")


def test_prepare_leaves_gradients_for_taylor_and_nothing_for_magnitude():
    model = _model()
    criteria.prepare("l2", criteria.make("l2"), model, _data(), batches=2, seed=0)
    assert all(p.grad is None for p in model.parameters())
    criteria.prepare("taylor", criteria.make("taylor"), model, _data(), batches=2, seed=0)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_prepare_binds_the_oracle_to_a_calibration_sample():
    model, imp = _model(), criteria.make("loss_change")
    criteria.prepare("loss_change", imp, model, _data(), batches=1, seed=0)
    assert imp._batch is not None and len(imp._batch[0]) == 64


def test_torch_pruning_private_to_plain_idxs_still_maps_index_mappings_to_plain_ints():
    """The oracle relies on this private helper (torch_pruning._helpers): pin its behaviour."""
    from torch_pruning._helpers import _HybridIndex

    assert to_plain_idxs([_HybridIndex(idx=3, root_idx=1), _HybridIndex(idx=5, root_idx=0)]) == [3, 5]
