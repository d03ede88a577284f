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
    assert parity(model, path, x, tolerance=1e-4) <= 1e-4
    assert predict(session(path), x[:1]).shape == (1, 10)  # dynamic batch axis


def test_parity_raises_when_the_tolerance_is_not_met(model, tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 8, 8), path, opset=17)
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32) * 50
    with torch.no_grad():
        model.classifier.bias += 1.0  # the exported file no longer matches the module
    try:
        with pytest.raises(ParityError, match="exceeds the parity tolerance"):
            parity(model, path, x, tolerance=1e-4)
    finally:
        with torch.no_grad():
            model.classifier.bias -= 1.0
