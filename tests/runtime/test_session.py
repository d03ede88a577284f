"""Model files a stage opens: external data outside the model's directory, missing, or linked out, and a file that is
no model, are one line (ModelError) before ONNX or ONNX Runtime reads them (they refuse too, as a traceback)."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pruning.errors import ModelError
from pruning.runtime.quantize import quantize
from pruning.runtime.session import check_model_file, run, session

W = np.arange(16, dtype=np.float32).reshape(4, 4)


def externalize(model: onnx.ModelProto, tensor: onnx.TensorProto, data: Path, location: str) -> None:
    """Move ``tensor``'s bytes to ``data``, referenced from the model as ``location`` (what any ONNX writer may do)."""
    data.write_bytes(numpy_helper.to_array(tensor).tobytes())
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(data.stat().st_size))):
        tensor.external_data.add(key=key, value=value)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")


def _model(tmp_path: Path, location: str | None, data: Path | None = None, in_subgraph: bool = False) -> Path:
    """models/m.onnx: x @ W, W kept in ``data`` as ``location`` (None: in the file); ``in_subgraph``: W a
    constant inside an If branch."""
    (tmp_path / "models").mkdir(exist_ok=True)
    weight = numpy_helper.from_array(W, "W")
    if in_subgraph:
        branch = helper.make_graph([helper.make_node("Constant", [], ["W"], value=weight)], "b", [],
                                   [helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 4])])
        nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
                 helper.make_node("If", ["c"], ["Wb"], then_branch=branch, else_branch=branch),
                 helper.make_node("MatMul", ["x", "Wb"], ["y"])]
        inits = []
    else:
        nodes, inits = [helper.make_node("MatMul", ["x", "W"], ["y"])], [weight]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if location is not None:
        tensor = model.graph.node[1].attribute[0].g.node[0].attribute[0].t if in_subgraph else model.graph.initializer[0]
        externalize(model, tensor, data or tmp_path / "models" / location, location)
    onnx.save(model, str(tmp_path / "models" / "m.onnx"))
    return tmp_path / "models" / "m.onnx"


def test_external_data_beside_the_model_is_read(tmp_path):
    path = _model(tmp_path, "w.bin")
    np.testing.assert_array_equal(run(session(path), np.ones((1, 4), np.float32)), np.ones((1, 4)) @ W)


@pytest.mark.parametrize("in_subgraph", [False, True])
def test_external_data_outside_the_model_s_directory_is_one_line_before_onnx_runtime_reads_it(tmp_path, in_subgraph):
    path = _model(tmp_path, "../secret.bin", tmp_path / "secret.bin", in_subgraph)
    expected = (f"{path}: tensor 'W' keeps its data in '../secret.bin', outside the model's directory: refused "
                "(rerun the stage that wrote it)")
    for open_it in (check_model_file, session,
                    lambda p: quantize(p, tmp_path / "q.onnx", "dynamic", np.zeros((1, 4), np.float32))):
        with pytest.raises(ModelError) as exc:
            open_it(path)
        assert str(exc.value) == expected
    assert not (tmp_path / "q.onnx").exists()


def test_external_data_linked_out_of_the_directory_or_missing_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.bin").write_bytes(W.tobytes())
    (tmp_path / "models" / "w.bin").symlink_to(tmp_path / "secret.bin")
    path = _model(tmp_path, "w.bin", tmp_path / "secret.bin")
    with pytest.raises(ModelError, match=r"keeps its data in 'w\.bin', outside the model's directory: refused"):
        session(path)
    (tmp_path / "models" / "w.bin").unlink()
    with pytest.raises(ModelError, match=r"keeps its data in 'w\.bin', which is not a file beside it"):
        session(path)


def test_a_file_that_is_no_onnx_model_is_one_line(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError) as exc:
        session(tmp_path / "m.onnx")
    assert str(exc.value) == f"{tmp_path / 'm.onnx'} is not an ONNX model (DecodeError): rerun the stage that wrote it"
