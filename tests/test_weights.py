"""Loading a user's weights file: the shapes people save, refused pickles, one-line mismatches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruning.errors import ModelError
from pruning.weights import load_weights, read_state_dict


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


@pytest.fixture
def source() -> nn.Module:
    torch.manual_seed(3)
    model = net()
    model[1].running_mean.normal_()  # buffers travel too
    return model


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "model_state_dict", "ddp", "compiled", "ddp_in_ckpt"])
def test_the_shapes_people_save_load_into_the_built_architecture(source, tmp_path, wrap):
    state = source.state_dict()
    saved = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}},
        "model": {"model": state, "args": ["--lr", "0.1"]},
        "model_state_dict": {"model_state_dict": state},
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "ddp_in_ckpt": {"state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}},
    }[wrap]
    torch.save(saved, tmp_path / "w.pt")
    target = net()
    assert not _same(target, source)
    assert _same(load_weights(target, tmp_path / "w.pt"), source)


def test_safetensors_files_load(source, tmp_path):
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    assert _same(load_weights(net(), tmp_path / "w.safetensors"), source)


def test_a_pickled_whole_model_is_refused_without_running_anything(source, tmp_path):
    torch.save(source, tmp_path / "whole.pt")  # a pickle of the class: loading it would import and call code
    with pytest.raises(ModelError, match=r"weights_only=True.*whole pickled models are refused") as err:
        read_state_dict(tmp_path / "whole.pt")
    assert err.value.field == "weights" and "\n" not in str(err.value)


def test_a_mismatch_lists_missing_unexpected_and_mis_shaped_keys_in_one_line(source, tmp_path):
    state = dict(source.state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["3.bias"]
    state["0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ModelError) as err:
        load_weights(net(), tmp_path / "w.pt", "model.arch 'net'")
    message = str(err.value)
    assert "\n" not in message and "do not fit model.arch 'net'" in message
    assert "missing 1: 3.bias" in message and "unexpected 1: extra.weight" in message
    assert "0.weight (16, 3, 3, 3) vs (8, 3, 3, 3)" in message


@pytest.mark.parametrize("content, match", [
    (b"not a torch file", "cannot be read with torch.load"),
    ({"epoch": 3, "lr": 0.1}, "without a state dict of tensors under any of state_dict"),
    ([torch.zeros(1)], "holds a list, not a state dict"),
])
def test_files_that_hold_no_state_dict_say_what_they_hold(tmp_path, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ModelError, match=match):
        read_state_dict(path)
