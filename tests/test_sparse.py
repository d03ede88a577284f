"""Compressed sparse storage (CSR / CSC / COO) of pruned weights, exact round trips, and the sizes reported."""

from __future__ import annotations

import pytest
import torch

from pruning.methods.unstructured import magnitude_prune, make_permanent, weight_sparsity
from pruning.sparse import dense_size_bytes, from_sparse, load_sparse, save_sparse, sparse_size_bytes, storage, to_sparse
from tests.methods.test_unstructured import mlp, tiny_resnet


def pruned_state(sparsity: float) -> dict[str, torch.Tensor]:
    model = tiny_resnet()
    magnitude_prune(model, sparsity, "global")
    make_permanent(model)
    return model.state_dict()


@pytest.mark.parametrize("layout", ["csr", "csc", "coo"])
def test_from_sparse_round_trips_exactly_when_layout_is_csr_csc_or_coo(layout):
    state = pruned_state(0.8)
    sparse = to_sparse(state, layout)
    weight = sparse["layers.1.conv1.weight"]
    assert weight["layout"] == layout and weight["shape"] == [8, 4, 3, 3]
    assert weight["values"].numel() == int(torch.count_nonzero(state["layers.1.conv1.weight"]))
    assert all(v.dtype == torch.int32 for k, v in weight.items() if k.endswith("indices"))
    assert sparse["layers.1.bn1.running_var"]["layout"] == "dense"
    restored = from_sparse(sparse)
    assert restored.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(restored[key], tensor) and restored[key].dtype == tensor.dtype, key


def test_sparse_size_bytes_is_below_a_quarter_of_dense_when_sparsity_is_90_percent():
    model = mlp()
    magnitude_prune(model, 0.9, "global")
    make_permanent(model)
    state = model.state_dict()
    ratio = sparse_size_bytes(to_sparse(state, "csr")) / dense_size_bytes(state)
    # 8 bytes (fp32 value + int32 column) per non-zero against 4 per weight: 0.1 * 8 / 4 = 0.2, plus row pointers
    # and the dense biases; measured 0.225
    assert 0.2 < ratio < 0.25
    assert sparse_size_bytes(to_sparse(state, "coo")) > sparse_size_bytes(to_sparse(state, "csr"))  # 2 indices/nnz


def test_to_sparse_raises_when_masks_are_not_made_permanent():
    model = tiny_resnet()
    magnitude_prune(model, 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        to_sparse(model.state_dict())
    with pytest.raises(ValueError, match="'bsr'"):
        to_sparse(pruned_state(0.5), "bsr")


def test_load_sparse_round_trips_when_read_with_weights_only(tmp_path):
    state = pruned_state(0.9)
    path = tmp_path / "sub" / "sparse.pt"
    save_sparse(path, to_sparse(state, "csc"))
    raw = torch.load(path, weights_only=True)  # plain containers only: nothing to unpickle
    assert raw["classifier.weight"]["layout"] == "csc"
    restored = from_sparse(load_sparse(path))
    assert all(torch.equal(restored[k], v) for k, v in state.items())
    model = tiny_resnet()
    model.load_state_dict(restored)
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-3)


def test_storage_reports_the_zero_share_and_both_sizes():
    state = pruned_state(0.8)
    report = storage(state)
    assert report["weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert report["csr_bytes"] == sparse_size_bytes(to_sparse(state, "csr"))
    assert report["dense_bytes"] == dense_size_bytes(state) > report["csr_bytes"]
