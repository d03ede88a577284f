"""bench/families.py (EfficientNet-B0, ResNeXt, DenseNet, ShuffleNetV2 in plain torch) and how bench latency takes its
--arch entries: the families build, export with parity and prune (all but the shuffle, which is skipped, named)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

import bench.latency as bl
from bench import families
from bench.config import bench_config
from pruning import criteria, dependency
from pruning.config import parse_config
from pruning.counting import count_macs
from pruning.data import Data, Split
from pruning.errors import ConfigError, GraphTraceError
from pruning.methods import METHODS, Context
from pruning.runtime.export import export_onnx, parity
from pruning.training import recalibrate_batchnorm
from tests.conftest import REPO, TINY

SHAPE, CLASSES = (3, 32, 32), 10
# the prunable families; DenseNet with 3 layers per block (its 32 concatenations make tracing the slow part, and the
# structure is the same), EfficientNet with B0's stages but one block each, two where a residual add joins them
SHALLOW_B0 = tuple((*stage[:4], 2 if i in (1, 3) else 1) for i, stage in enumerate(families.EFFICIENTNET_B0))
PRUNABLE = {"efficientnet_b0_like": lambda num_classes: families.EfficientNetLike(num_classes, stages=SHALLOW_B0),
            "resnext_like": families.resnext_like,
            "densenet_like": lambda num_classes: families.DenseNetLike(num_classes, blocks=(3, 3, 3, 3))}


@pytest.fixture(scope="module")
def data() -> Data:
    x = torch.randn(96, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.arange(96) % CLASSES
    return Data(Split(x[:64], y[:64]), Split(x[64:], y[64:]), SHAPE, CLASSES)


def _built(name: str, data: Data, build: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The family at random init, with BatchNorm statistics of the data: default init alone makes the deep nets'
    activations vanish in eval mode, and parity on outputs that are all the classifier's bias would prove nothing."""
    torch.manual_seed(0)
    model = (build or families.FAMILIES[name])(num_classes=CLASSES)
    recalibrate_batchnorm(model, data.train, 2, seed=0)
    return model.eval()


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_every_family_builds_forwards_and_exports_to_onnx_with_parity(name, data, tmp_path):
    model = _built(name, data)
    x = data.test.x[:4]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, CLASSES) and out.std() > 1e-2  # not the bias alone
    export_onnx(model, SHAPE, tmp_path / "m.onnx", 17)
    assert parity(model, tmp_path / "m.onnx", x.numpy(), atol=1e-4, rtol=0.0).max_abs <= 1e-4


def test_the_families_have_their_layouts():
    eff, rx = families.efficientnet_b0_like(), families.resnext_like().eval()
    se = [m for m in eff.modules() if isinstance(m, families.SqueezeExcitation)]
    assert len(se) == 16 and eff.classifier[-1].in_features == 1280  # B0's 16 MBConv blocks, head 1280
    assert {m.kernel_size for m in eff.modules() if isinstance(m, nn.Conv2d) and m.groups > 1} == {(3, 3), (5, 5)}
    assert {m.groups for m in rx.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {32}
    assert rx.classifier[-1].in_features == 2048 and rx(torch.randn(1, *SHAPE)).shape == (1, 1000)
    assert families.shufflenetv2_like(5).features[-1][0].out_channels == 1024


@pytest.mark.parametrize("name", PRUNABLE)
def test_the_default_channel_method_prunes_the_family(name, data, tmp_path):
    model = _built(name, data, PRUNABLE[name])
    dense_macs = count_macs(model, SHAPE)[0]
    cfg = METHODS["channel"].Config()  # params.yaml's defaults: ratio 0.35, round_to 8
    ctx = Context(data=data, seed=0, device="cpu", build=PRUNABLE[name], latency_table=tmp_path / "t.json", opset=17)
    out = METHODS["channel"].apply(model, cfg, ctx)
    assert count_macs(out.model, SHAPE)[0] < 0.75 * dense_macs
    assert out.model(data.test.x[:2]).shape == (2, CLASSES)
    assert abs(out.report["achieved_ratio"] - cfg.ratio) <= 0.1 * cfg.ratio
    modules = dict(out.model.named_modules())
    for row in out.report["channel_plan"]:
        assert modules[row["layer"]].out_channels == row["keep"]
        assert row["keep"] % 8 == 0 or row["keep"] == row["channels"] or "channel groups" in row["note"]


def test_the_channel_shuffle_is_a_one_line_graph_trace_error(data):
    model = _built("shufflenetv2_like", data)
    with pytest.raises(GraphTraceError) as err:
        bl.check_prunable(model, Split(data.train.x[:8], data.train.y[:8]))
    assert "\n" not in str(err.value) and "torch-pruning" in str(err.value)


@pytest.mark.parametrize("round_to", [None, 8])
def test_one_channel_squeeze_layers_stay_dense_instead_of_failing_every_ratio(round_to):
    """Issue 15: squeeze-excitation layers of 1 channel made every ratio "remove every channel" of them, so the MACs
    target search said '2.0 is out of reach (at most 1.00x, at ratio 0.000)'; no ratio can prune them, so they are
    kept dense like every group narrower than round_to, and the rest is pruned."""
    torch.manual_seed(0)
    model = families.efficientnet_b0_like(CLASSES)
    for block in model.features[:6]:
        if isinstance(block, families.MBConv):
            block.se = families.SqueezeExcitation(block.se.reduce.in_channels, 1)
    model.eval()
    dense_macs = count_macs(model, SHAPE)[0]
    pruner, plan = dependency.build_pruner(model, SHAPE, criteria.make("l2"), ratio=0.35, scope="uniform",
                                           iterative_steps=1, round_to=round_to, max_layer_ratio=0.9,
                                           ignored=dependency.ignored_modules(model, []))
    dependency.prune_step(pruner, model)
    assert count_macs(model, SHAPE)[0] < 0.75 * dense_macs
    assert model.features[1].se.reduce.out_channels == 1 and model.features[1].se.expand.out_channels < 32
    assert any(r["layer"] == "features.1.se.reduce" and "kept dense" in r["note"] for r in plan.rows)


def test_arch_entries_are_zoo_names_families_or_module_callables():
    assert isinstance(bl.resolve_arch("efficientnet_b0_like")(SHAPE, CLASSES), families.EfficientNetLike)
    assert bl.resolve_arch("mobilenetv2")(SHAPE, CLASSES).classifier.out_features == CLASSES
    model = bl.resolve_arch("bench.families:resnext_like")(SHAPE, CLASSES)
    assert isinstance(model, families.ResNeXtLike) and model.classifier[-1].out_features == CLASSES
    for entry, says in [("nosuch.module:fn", "cannot import module 'nosuch.module'"),
                        ("bench.families:nosuch", "has no attribute 'nosuch'"),
                        ("os:system", "not a Python function"), ("resnet5O", "not a zoo name")]:
        with pytest.raises(ConfigError, match=f"--arch entry '{entry}'") as err:
            bl.resolve_arch(entry)
        assert says in str(err.value) and "\n" not in str(err.value)


def test_the_cli_names_a_bad_arch_entry_in_one_line_before_building_anything(monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # bench/params.yaml is read from the repository root
    monkeypatch.setattr(sys, "argv", ["bench.latency", "--arch", "resnet50,nosuch.module:fn", "--input-shape", "3,32,32"])
    assert bl._cli() == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'nosuch.module:fn'" in err
    monkeypatch.setattr(sys, "argv", ["bench.latency", "--input-shape", "3,x"])
    with pytest.raises(SystemExit):
        bl._cli()
    assert "--input-shape '3,x'" in capsys.readouterr().err


def test_an_arch_torch_pruning_cannot_prune_is_skipped_with_the_reason_and_its_dense_rows_are_timed(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths.latency_table is relative
    b = bench_config({"latency_repeats": 3, "latency_rounds": 1, "latency_warmup": 1})
    report = bl.run_latency(parse_config(TINY), b, ["shufflenetv2_like"], [1], 2.0, [8], tmp_path, shape=SHAPE,
                            num_classes=CLASSES)
    rows = report["archs"]["shufflenetv2_like"]
    assert set(rows) == {"dense", "dense, ORT basic optimisation", "dense + INT8"}
    assert rows["dense"]["speedup_b1"] == pytest.approx(1.0) and rows["dense + INT8"]["p50_ms_b1"] > 0
    why = report["skipped"]["shufflenetv2_like"]["pruned (every allocation)"]
    assert "torch-pruning" in why and "\n" not in why
    saved = json.loads((tmp_path / "latency.json").read_text())
    assert saved["input_shape"] == list(SHAPE) and saved["skipped"] == report["skipped"]
    assert f"Not built: pruned (every allocation): {why}" in report["markdown"]
