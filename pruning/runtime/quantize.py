"""ONNX Runtime INT8 quantization: static QDQ (per-channel, calibrated on training samples) or dynamic (MatMul / Gemm
weights int8, activations quantized at run time; transformers), ``auto`` choosing by the graph (:func:`resolved_mode`).

Static QDQ is what ORT recommends for CNNs on CPU. ORT's docs suggest int8 activations first; measured here (ORT 1.32,
a VNNI CPU, the default pruned ResNet at batch 256) uint8 activations with int8 per-channel weights ran 1.9 ms against
7.3 ms for int8/int8 and 3.2 ms for fp32, so uint8 is the default (``activation_type``). Dynamic quantization
turns convolutions into ConvInteger, which measured slower than fp32. The model is shape-pre-processed first (ORT's
``quant_pre_process``), as ORT's docs ask.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Collection
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from rich import get_console
from rich.progress import Progress

from pruning.errors import ModelError, QuantizationError
from pruning.runtime.session import check_model_file

log = logging.getLogger(__name__)

ORT_CALIBRATION_BATCH = 32  # samples per batch fed to ORT's calibrator


class _Calibration(CalibrationDataReader):
    """ORT CalibrationDataReader over calibration feeds (name -> batch), with a progress bar (calibration is the slow
    part)."""

    def __init__(self, batches: list[dict[str, np.ndarray]], progress: Progress) -> None:
        self._batches = batches
        self._progress = progress
        self._task = progress.add_task("INT8 calibration", total=len(self._batches))
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        batch = self._batches[self._i]
        self._i += 1
        self._progress.update(self._task, advance=1)
        return batch

    def rewind(self) -> None:
        self._i = 0


def preprocess(src: str | Path, dst: str | Path) -> None:
    """ORT's shape pre-processing of ``src`` into ``dst``, every node given a unique name (ORT excludes nodes from
    quantization by name, so an unnamed node could not be told apart). ``src`` is checked first
    (:func:`~pruning.runtime.session.check_model_file`)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    check_model_file(src)
    # ORT's symbolic shape inference gives up on a transformer's sequence axis ("Incomplete symbolic shape
    # inference", after writing its partial model into the working directory): graphs with a dynamic axis besides the
    # batch skip it; onnx's own shape inference and the graph optimisation still run, and quantization does not need
    # the symbolic shapes
    graph = onnx.load(str(src), load_external_data=False).graph
    sequences = any(d.dim_param and d.dim_param != "batch" for i in graph.input for d in i.type.tensor_type.shape.dim)
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=sequences)
    model = onnx.load(str(dst))
    seen: set[str] = set()
    renamed = False
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name, renamed = f"{node.op_type}_{i}_unnamed", True
        seen.add(node.name)
    if renamed:
        onnx.save(model, str(dst))


def resolved_mode(path: str | Path, mode: str) -> str:
    """``auto``: static QDQ for a convolutional graph (more Conv than MatMul nodes: what ORT recommends for CNNs),
    dynamic otherwise (weights int8, activations quantized per batch at run time: what ORT users do with
    transformers on CPU, whose MatMul inputs vary too much per sample for one calibrated range; a ViT's one patch
    convolution does not make it a CNN). Any other mode as it is."""
    if mode != "auto":
        return mode
    import onnx

    ops = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
    return "static" if ops.count("Conv") > ops.count("MatMul") else "dynamic"


def quantize(src: str | Path, dst: str | Path, mode: str, calibration: np.ndarray | list[dict[str, np.ndarray]],
             per_channel: bool = True, method: str = "minmax", activation_type: str = "uint8", *,
             exclude: Collection[str] = (), preprocessed: bool = False, ranges: str | Path | None = None) -> None:
    """Quantize ``src`` into ``dst``.

    Args:
        mode: ``static`` (QDQ, calibrated on ``calibration``) or ``dynamic``.
        calibration: training samples of a single-input model, shape (N, *input_shape), float32; or ORT feeds
            (input name -> batch), one dict per calibration batch.
        method: static calibration method: minmax, entropy or percentile.
        activation_type: static activations as ``uint8`` or ``int8`` (weights are always int8).
        exclude: names of nodes left in fp32 (static), as named in the pre-processed model.
        preprocessed: ``src`` is already the output of :func:`preprocess`.
        ranges: a file caching the calibrated activation ranges (static): written by the first call, read by the next
            ones, so quantizing one model several ways calibrates it once.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pre = Path(src) if preprocessed else Path(tmp) / "preprocessed.onnx"
            if not preprocessed:
                preprocess(src, pre)
            if mode == "dynamic":
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
                return
            if isinstance(calibration, np.ndarray):
                import onnx

                name = onnx.load(str(src), load_external_data=False).graph.input[0].name
                calibration = [{name: calibration[i:i + ORT_CALIBRATION_BATCH]}
                               for i in range(0, len(calibration), ORT_CALIBRATION_BATCH)]
            cached = ranges is not None and Path(ranges).is_file()
            with Progress(transient=False, disable=cached or not get_console().is_terminal) as progress:  # no bar in a log
                reader = None if cached else _Calibration(calibration, progress)
                quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                                calibrate_method=methods[method], calibration_cache_path=ranges,
                                extra_options={"CalibTensorRangeSymmetric": False})
    except ModelError:  # the model file itself, named by preprocess
        raise
    except Exception as exc:  # ORT raises assorted errors (onnx, numpy, its own)
        raise QuantizationError(f"INT8 quantization of {src} failed: {type(exc).__name__}: {exc}") from None
