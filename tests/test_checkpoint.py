"""Pickle-free model files: edits replayed on the dense architecture, weights_only loading, old files, constraints."""

import os

import pytest
import torch
from torch import nn

from pruning import checkpoint, criteria, dependency, residual
from pruning.counting import channel_table
from pruning.data import Split
from pruning.errors import ModelError
from pruning.methods.unstructured import magnitude_prune, make_permanent
from pruning.training import Optim, fit
from pruning.zoo import build_model

SHAPE = (1, 8, 8)
KWARGS = {"widths": [8, 16, 16], "blocks": [2, 1, 1]}


def _pruned() -> tuple[nn.Module, list[str], list]:
    """Depth (one block) then channels: both kinds of structural edit."""
    torch.manual_seed(0)
    model = build_model("resnet", KWARGS, SHAPE, 10)
    model = residual.remove(model, ["layers.1"], SHAPE)
    pruner, _ = dependency.build_pruner(model, SHAPE, criteria.make("l2"), ratio=0.5, scope="uniform", iterative_steps=1,
                                     round_to=None, max_layer_ratio=0.9, ignored=dependency.ignored_modules(model, []))
    dependency.prune_step(pruner, model)
    return model, ["layers.1"], pruner.pruning_history()


def test_save_model_round_trips_blocks_then_channels_with_a_weights_only_load(tmp_path):
    model, blocks, history = _pruned()
    path = tmp_path / "pruned.pt"
    edits = [checkpoint.blocks_edit(blocks), checkpoint.channels_edit(history)]
    checkpoint.save_model(path, model, arch="resnet", kwargs=KWARGS, input_shape=SHAPE, num_classes=10, edits=edits,
                          meta={"stage": "test"})
    record = torch.load(path, weights_only=True)  # the proof: no pickled code in the file
    assert [e["kind"] for e in record["edits"]] == ["blocks", "channels"]
    loaded, _ = checkpoint.load_model(path)
    x = torch.randn(5, *SHAPE)
    assert torch.equal(loaded(x), model.eval()(x))
    assert channel_table(loaded) == channel_table(model)
    assert checkpoint.removed_blocks(record) == ["layers.1"]
    assert not list(tmp_path.glob("*.tmp"))  # written through a temp file, renamed into place


def test_load_model_reads_a_format_1_file_as_edits(tmp_path):
    model, blocks, history = _pruned()
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "arch": "resnet", "kwargs": KWARGS, "input_shape": list(SHAPE), "num_classes": 10,
                "removed_blocks": blocks, "history": [[n, bool(o), list(i)] for n, o, i in history],
                "state_dict": model.state_dict(), "meta": {}}, path)
    loaded, record = checkpoint.load_model(path)
    assert [e["kind"] for e in record["edits"]] == ["blocks", "channels"]
    x = torch.randn(3, *SHAPE)
    assert torch.equal(loaded(x), model.eval()(x))


def test_load_model_rejects_a_pickled_module_and_an_unknown_edit(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "evil.pt")  # a whole pickled module: refused by weights_only
    with pytest.raises(ModelError, match="not a model file of this pipeline"):
        checkpoint.load_model(tmp_path / "evil.pt")
    model = build_model("resnet", KWARGS, SHAPE, 10)
    checkpoint.save_model(tmp_path / "future.pt", model, arch="resnet", kwargs=KWARGS, input_shape=SHAPE,
                          num_classes=10, edits=[{"kind": "quantum", "x": 1}])
    with pytest.raises(ModelError, match=r"cannot replay: \['quantum'\]"):
        checkpoint.load_model(tmp_path / "future.pt")


def test_a_model_file_cannot_choose_the_code_that_builds_it(tmp_path):
    """A file that passes torch.load(weights_only=True) but records arch "os:system": loading it calls nothing."""
    import os

    marker = tmp_path / "ran"
    model = build_model("resnet", KWARGS, SHAPE, 10)
    checkpoint.save_model(tmp_path / "evil.pt", model, arch="os:system", kwargs={"command": f"touch {marker}"},
                          input_shape=SHAPE, num_classes=10)
    with pytest.raises(ModelError, match=r"records the architecture 'os:system', which is not a zoo name"):
        checkpoint.load_model(tmp_path / "evil.pt")
    with pytest.raises(ModelError, match=r"was built by 'os:system', but the configured architecture is 'resnet'"):
        checkpoint.load_model(tmp_path / "evil.pt", arch="resnet")
    assert not marker.exists() and os.path.exists(tmp_path / "evil.pt")


def test_a_stage_refuses_a_model_file_whose_architecture_is_not_the_configured_one(finished_copy):
    from pruning.config import load_config
    from pruning.stages.export import run

    cfg = load_config("params.yaml")
    record = torch.load(cfg.paths.finetuned_model, weights_only=True)
    record["arch"], record["kwargs"] = "subprocess:getoutput", {"cmd": "touch ran"}
    torch.save(record, cfg.paths.finetuned_model)
    with pytest.raises(ModelError, match="was built by 'subprocess:getoutput'"):
        run(cfg)
    assert not os.path.exists("ran")


def test_constraints_keep_masked_weights_zero_while_the_model_trains(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet", KWARGS, SHAPE, 10)
    magnitude_prune(model, 0.7, "global")
    make_permanent(model)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    path = tmp_path / "masked.pt"
    checkpoint.save_model(path, model, arch="resnet", kwargs=KWARGS, input_shape=SHAPE, num_classes=10,
                          edits=[checkpoint.mask_edit(layers)])
    loaded, record = checkpoint.load_model(path)
    zeros = {n: (m.weight == 0).clone() for n, m in loaded.named_modules() if n in layers}
    data = Split(torch.randn(128, *SHAPE), torch.randint(0, 10, (128,)))
    fit(loaded, data, Optim(1, 32, 0.1), seed=0, desc="t", callbacks=checkpoint.constraints(loaded, record))
    for name, m in loaded.named_modules():
        if name in layers:
            assert torch.all(m.weight[zeros[name]] == 0), name  # every masked weight is still exactly zero
    assert any(not torch.equal(m.weight, model.get_submodule(n).weight) for n, m in loaded.named_modules()
               if n in layers)  # and the others trained
