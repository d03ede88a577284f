"""Per-operator INT8 selection: the operator groups found in the graph, the candidates, and the choice by timing (an
injected timer: real timings are too noisy to assert on)."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pruning.runtime.export import export_onnx
from pruning.runtime.int8_select import FP32, candidates, groups, quantizable_ops, select
from pruning.runtime.quantize import preprocess
from pruning.runtime.session import predict, session
from pruning.runtime.timing import Protocol, latency
from pruning.zoo import build_model

SHAPE = (3, 8, 8)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b, self.act = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.b(self.act(self.a(x.mean((2, 3), keepdim=True)))))


class Tiny(nn.Module):
    """A stem conv + SiLU, a depthwise conv + SiLU, a squeeze-excitation block, a pointwise conv, pool + linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.SiLU())
        self.se = SqueezeExcite(16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.se(self.dw(self.stem(x))))
        return self.head(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


SE = {"/se/a/Conv", "/se/act/Sigmoid", "/se/act/Mul", "/se/b/Conv", "/se/Sigmoid", "/se/Mul"}
SILU = {"/stem/stem.1/Sigmoid", "/stem/stem.1/Mul", "/dw/dw.1/Sigmoid", "/dw/dw.1/Mul"}


def _export(model: nn.Module, path, shape=SHAPE):
    torch.manual_seed(0)
    export_onnx(model.eval(), shape, path, opset=17)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return _export(Tiny(), tmp_path_factory.mktemp("sel") / "tiny.onnx")


def _pre(path, tmp_path):
    preprocess(path, tmp_path / "pre.onnx")
    return onnx.load(str(tmp_path / "pre.onnx"))


def _calibration(n=32, shape=SHAPE):
    return np.random.default_rng(0).standard_normal((n, *shape), dtype=np.float32)


def test_ort_quantizes_the_operators_the_groups_are_made_of():
    """Pins ORT's default operator set (its registry), which the groups are limited to."""
    assert {"Conv", "Gemm", "MatMul", "Add", "Mul", "Sigmoid", "GlobalAveragePool"} <= quantizable_ops()
    assert "ReduceMean" not in quantizable_ops()


def test_groups_name_the_depthwise_conv_the_squeeze_excitation_path_and_the_elementwise_ops(tiny, tmp_path):
    found = groups(_pre(tiny, tmp_path))
    assert found["depthwise"] == {"/dw/dw.0/Conv"}  # not the stem (group 1) nor the SE's 1x1 convs
    assert found["se"] == SE  # pool (ReduceMean: not quantized) -> conv -> SiLU -> conv -> sigmoid -> gating Mul
    assert found["elementwise"] == SILU | (SE - {"/se/a/Conv", "/se/b/Conv"})
    assert not ({"/GlobalAveragePool", "/Flatten", "/head/Gemm"} & found["se"])  # the head's pool is no SE


def test_candidates_are_every_combination_of_groups_each_once(tiny, tmp_path):
    cands = {c.name: c.excluded for c in candidates(_pre(tiny, tmp_path))}
    assert list(cands) == ["all", "no_depthwise", "no_se", "no_elementwise", "no_depthwise_se",
                           "no_depthwise_elementwise", "no_se_elementwise", "no_depthwise_se_elementwise"]
    assert cands["all"] == set()
    assert cands["no_depthwise_se"] == SE | {"/dw/dw.0/Conv"}
    assert len(set(cands.values())) == len(cands)


@pytest.mark.parametrize(("arch", "expected"), [("vgg", ["all"]), ("resnet", ["all", "no_elementwise"])])
def test_a_net_without_depthwise_or_se_gets_one_or_two_candidates(arch, expected, tmp_path):
    model = build_model(arch, {"widths": [8, 16, 32]} if arch == "resnet" else {}, (1, 8, 8), 10)
    cands = candidates(_pre(_export(model, tmp_path / "m.onnx", (1, 8, 8)), tmp_path))
    assert [c.name for c in cands] == expected  # resnet: its residual Adds


class FakeTimer:
    """The timing protocol's signature and output, with given medians; records what it was asked to time."""

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms, self.calls = ms, []

    def __call__(self, models, x, batch_sizes, threads, protocol, levels=None, desc=None):
        self.calls.append((dict(models), x, batch_sizes, threads, protocol))
        return {n: {"latency_ms_b1": self.ms.get(n, 10.0), "latency_p95_ms_b1": self.ms.get(n, 10.0)} for n in models}


def _quantized_inputs(path) -> set[str]:
    """Names of the nodes that read a dequantized weight (run in INT8)."""
    graph = onnx.load(str(path)).graph
    dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dq}


def test_select_keeps_the_candidate_the_timer_finds_fastest(tiny, tmp_path):
    timer = FakeTimer({FP32: 5.0, "all": 4.0, "no_depthwise": 3.0, "no_se": 3.5})
    out = tmp_path / "int8.onnx"
    sel = select(tiny, out, _calibration(), threads=2, protocol=Protocol(1, 3, 2), timer=timer)
    (models, x, batch_sizes, threads, protocol), = timer.calls  # one alternating measurement of all of them
    assert set(models) == {FP32, *(c.name for c in sel.candidates)} and models[FP32] == tiny
    assert batch_sizes == {"b1": 1} and threads == 2 and protocol == Protocol(1, 3, 2) and x.shape[1:] == SHAPE
    assert sel.chosen.name == "no_depthwise" and sel.int8_faster_than_fp32
    assert _quantized_inputs(out) == {"/stem/stem.0/Conv", "/se/a/Conv", "/se/b/Conv", "/pw/Conv", "/head/Gemm"}
    report = sel.report()
    assert report["chosen"] == "no_depthwise" and report["int8_faster_than_fp32"] is True
    assert report["fp32_latency_ms_b1"] == 5.0 and report["chosen_excluded"] == ["/dw/dw.0/Conv"]
    assert report["candidates"]["no_se"] == {"excluded_nodes": 6, "latency_ms_b1": 3.5}
    assert len(report["candidates"]) == 8


def test_select_still_writes_the_fastest_int8_but_says_so_when_fp32_is_faster(tiny, tmp_path):
    out = tmp_path / "int8.onnx"
    sel = select(tiny, out, _calibration(), timer=FakeTimer({FP32: 1.0, "no_se": 2.0}))
    assert sel.chosen.name == "no_se" and sel.int8_faster_than_fp32 is False
    assert sel.report()["int8_faster_than_fp32"] is False
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_a_selection_within_the_timing_noise_of_all_does_not_displace_it(tiny, tmp_path):
    # 5 % faster is noise on a shared machine: the decision, and the shipped model, must not flip between reruns
    sel = select(tiny, tmp_path / "int8.onnx", _calibration(), timer=FakeTimer({FP32: 5.0, "all": 4.0, "no_se": 3.8}))
    assert sel.chosen.name == "all"
    sel = select(tiny, tmp_path / "int8.onnx", _calibration(), timer=FakeTimer({FP32: 5.0, "all": 4.0, "no_se": 3.4}))
    assert sel.chosen.name == "no_se"


def test_candidates_whose_quantized_graphs_are_the_same_are_timed_once(tmp_path):
    """MobileNetV2's residual Adds sit between quantized convolutions: leaving them out changes nothing."""
    model = build_model("mobilenetv2", {}, (1, 8, 8), 10)
    src = _export(model, tmp_path / "m.onnx", (1, 8, 8))
    timer = FakeTimer({})
    sel = select(src, tmp_path / "int8.onnx", _calibration(shape=(1, 8, 8)), timer=timer)
    assert [c.name for c in sel.candidates] == ["all", "no_depthwise"]
    assert sel.same_as == {"no_elementwise": "all", "no_depthwise_elementwise": "no_depthwise"}
    assert set(timer.calls[0][0]) == {FP32, "all", "no_depthwise"}
    assert sel.chosen.name == "all"  # a tie keeps the one leaving fewer nodes in fp32


def test_the_kept_model_is_valid_onnx_that_runs_close_to_fp32(tiny, tmp_path):
    out = tmp_path / "int8.onnx"
    select(tiny, out, _calibration(64), protocol=Protocol(0, 3, 1), timer=latency)  # the real protocol, tiny
    onnx.checker.check_model(str(out), full_check=True)
    x = _calibration(16)
    ref, got = predict(session(tiny), x), predict(session(out), x)
    assert np.max(np.abs(ref - got)) < 0.2 * np.max(np.abs(ref))
