import numpy as np
import onnx
import pytest
import torch

from pruning.errors import ParityError
from pruning.runtime.export import export_onnx, parity
from pruning.runtime.session import predict, session
from pruning.zoo import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [8, 16, 16]}, (1, 8, 8), 10).eval()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_onnx_matches_torch_on_any_batch_size(model, tmp_path, exporter):
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 8, 8), path, opset=17, exporter=exporter)
    onnx.checker.check_model(str(path))
    x = np.random.default_rng(0).normal(size=(7, 1, 8, 8)).astype(np.float32)
    result = parity(model, path, x, atol=1e-4, rtol=1e-5)
    assert result.max_abs <= 1e-4 and result.score <= 1.0
    assert predict(session(path), x[:1]).shape == (1, 10)  # dynamic batch axis


def test_parity_raises_when_the_tolerance_is_not_met(model, tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 8, 8), path, opset=17)
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32) * 50
    with torch.no_grad():
        model.classifier.bias += 1.0  # the exported file no longer matches the module
    try:
        with pytest.raises(ParityError, match=r"the pruned model's ONNX export differs from torch beyond atol 0.0001 "
                                              r"\+ rtol 1e-05 x \|torch\|: 1 at output \(\d+, \d+\)") as err:
            parity(model, path, x, atol=1e-4, rtol=1e-5, name="pruned")
        assert str(path) not in str(err.value)  # a temporary file: the model is named instead
    finally:
        with torch.no_grad():
            model.classifier.bias -= 1.0


def test_parity_holds_large_outputs_to_the_relative_tolerance_not_to_an_absolute_one(tmp_path):
    """Logits in the tens of thousands differ between torch and ORT by fp32 rounding (~1e-7 relative, ~1e-3
    absolute): within atol + rtol |torch|, though far above an absolute 1e-4."""
    torch.manual_seed(0)
    model = build_model("resnet", {"widths": [8, 16, 16]}, (1, 8, 8), 10).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(1e4)
        model.classifier.bias.fill_(3.6e4)
    path = tmp_path / "big.onnx"
    export_onnx(model.eval(), (1, 8, 8), path, opset=17)
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    result = parity(model, path, x, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        assert float(model(torch.from_numpy(x)).abs().max()) > 1e4
    assert result.max_abs > 1e-4 and result.score <= 1.0


def test_a_zero_tolerance_accepts_outputs_that_are_equal_and_refuses_any_difference(tmp_path):
    """atol = rtol = 0 is exact equality: an output torch and ORT agree on to the bit passes (0 / 0 used to count
    as a failure), one that differs fails with its element named."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 1.0, -2.0]))
    path = tmp_path / "const.onnx"
    export_onnx(model, (1, 2, 2), path, opset=17)
    x = np.random.default_rng(0).normal(size=(5, 1, 2, 2)).astype(np.float32)
    result = parity(model, path, x, atol=0.0, rtol=0.0)
    assert (result.max_abs, result.score) == (0.0, 0.0)
    with torch.no_grad():
        model[1].bias[1] += 1e-3
    with pytest.raises(ParityError, match=r"beyond atol 0 \+ rtol 0 x \|torch\|: 0\.001 at output \(0, 1\)"):
        parity(model, path, x, atol=0.0, rtol=0.0)
