import numpy as np
import onnx
import pytest
import torch

from pruning.errors import ModelError
from pruning.runtime.export import export_onnx
from pruning.runtime.quantize import preprocess, quantize
from pruning.runtime.session import predict, session
from pruning.zoo import build_model


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet", {"widths": [32, 32, 64]}, (1, 8, 8), 10).eval()  # big enough for weights to dominate
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    export_onnx(model, (1, 8, 8), path, opset=17)
    return path


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("activation_type", ["uint8", "int8"])
def test_quantize_static_inserts_qdq_and_stays_close_to_fp32(fp32, tmp_path, activation_type):
    rng = np.random.default_rng(0)
    calib = rng.random((64, 1, 8, 8), dtype=np.float32)
    out = tmp_path / "int8.onnx"
    quantize(fp32, out, "static", calib, per_channel=True, activation_type=activation_type)
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    assert out.stat().st_size < 0.5 * fp32.stat().st_size
    x = rng.random((32, 1, 8, 8), dtype=np.float32)
    ref, got = predict(session(fp32), x), predict(session(out), x)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.9
    assert np.max(np.abs(ref - got)) < 0.2 * np.max(np.abs(ref))


def test_quantize_dynamic_uses_integer_convolutions(fp32, tmp_path):
    out = tmp_path / "dyn.onnx"
    quantize(fp32, out, "dynamic", np.zeros((1, 1, 8, 8), np.float32))
    assert "ConvInteger" in _ops(out) or "DynamicQuantizeLinear" in _ops(out)


def test_quantize_names_the_file_when_the_model_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(ModelError) as exc:  # as every stage that opens it says (pruning.runtime.session)
        quantize(bad, tmp_path / "out.onnx", "static", np.zeros((4, 1, 8, 8), np.float32))
    assert str(exc.value) == f"{bad} is not an ONNX model (DecodeError): rerun the stage that wrote it"
    assert not (tmp_path / "out.onnx").exists()


def test_excluded_nodes_stay_fp32_and_a_ranges_file_calibrates_once(fp32, tmp_path):
    rng = np.random.default_rng(0)
    ranges, pre = tmp_path / "ranges.json", tmp_path / "pre.onnx"
    preprocess(fp32, pre)
    first = next(n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv")
    quantize(pre, tmp_path / "all.onnx", "static", rng.random((64, 1, 8, 8), dtype=np.float32), preprocessed=True,
             ranges=ranges)
    assert ranges.is_file()
    # no samples at all: the ranges come from the file (calibrating on nothing would fail)
    quantize(pre, tmp_path / "some.onnx", "static", np.zeros((0, 1, 8, 8), np.float32), preprocessed=True,
             ranges=ranges, exclude={first})
    graph = onnx.load(str(tmp_path / "some.onnx")).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n.input[1] in dequantized for n in graph.node if n.op_type == "Conv"}
    assert convs.pop(first) is False and convs and all(convs.values())  # its weights stay fp32, the others' do not
