import pytest
import torch

from pruning.errors import ModelError
from pruning.zoo import ZOO, build_model

SHAPES = {"resnet": (1, 8, 8), "vgg": (3, 16, 16), "mobilenetv2": (1, 8, 8), "resnet1d": (1, 40),
          "resnet50": (3, 224, 224), "mobilenetv2_imagenet": (3, 224, 224)}


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_build_model_outputs_logits_when_given_a_zoo_name(arch):
    model = build_model(arch, {}, SHAPES[arch], 7).eval()
    assert model(torch.randn(3, *SHAPES[arch])).shape == (3, 7)


def test_build_model_calls_user_code_when_given_module_callable(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def make(hidden=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("mynet:make", {"hidden": 6}, (1, 8, 8), 10)
    assert model[1].out_features == 6


def test_build_model_lists_the_zoo_when_the_name_is_unknown():
    with pytest.raises(ModelError, match="unknown architecture 'resnet9000'.*zoo: resnet"):
        build_model("resnet9000", {}, (1, 8, 8), 10)


def test_build_model_names_the_kwargs_when_the_builder_rejects_them():
    with pytest.raises(ModelError, match="cannot build 'resnet' with arguments"):
        build_model("resnet", {"depth": 3}, (1, 8, 8), 10)


@pytest.mark.parametrize(("arch", "gmacs", "mparams"), [("resnet50", 4.09, 25.56), ("mobilenetv2_imagenet", 0.30, 3.50)])
def test_imagenet_models_match_the_published_size(arch, gmacs, mparams):
    from pruning.counting import count_macs

    model = build_model(arch, {}, (3, 224, 224), 1000)
    macs, params = count_macs(model, (3, 224, 224))
    # torch-pruning's counter also counts BatchNorm and activations: +2 % on ResNet-50, +7 % on MobileNetV2
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.08)
    assert params / 1e6 == pytest.approx(mparams, rel=0.01)
