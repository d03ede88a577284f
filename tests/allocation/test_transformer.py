"""Latency allocation on transformers: heads, MLP width and layers priced from the latency table (linear layers at
their token rows, the attention core per head count), alike in every layer, applied by the channel method."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from pruning import attention, checkpoint, dependency
from pruning.allocation import latency_table as lt
from pruning.allocation import transformer as tf
from pruning.counting import count_macs
from pruning.data import forward
from pruning.errors import PruningError
from pruning.methods import METHODS, Context
from pruning.runtime.export import export_onnx, parity
from tests.test_transformers import SEQ, _data, bert, llama_gqa

pytestmark = pytest.mark.xdist_group("test_transformers")

Config = METHODS["channel"].Config


def _ctx(builder, tmp_path) -> Context:
    return Context(data=_data(builder), seed=0, device="cpu", build=builder, latency_table=tmp_path / "table.json",
                   opset=17)


def _model(builder) -> torch.nn.Module:
    torch.manual_seed(0)
    return builder().eval()


def test_a_linear_layer_is_priced_at_its_token_rows_and_an_attention_core_per_head_count(tmp_path):
    model = _model(llama_gqa)
    x = _data(llama_gqa).train.take(slice(0, 1)).x
    specs = lt.layer_specs(model, x)
    q = attention.find(model)[0].projections[0]
    assert specs[q].rows == SEQ and specs[q].macs() == SEQ * 64 * 64
    # a table measured before token rows existed keeps its keys: rows appear in a key only when there are several
    assert '"rows"' not in lt.LayerSpec("linear", 8, 4).key() and '"rows"' in specs[q].key()
    table = lt.LatencyTable(batch=1, threads=1)
    core = lt.LayerSpec("attention", 8, 8, spatial=(64,))
    assert core.macs() == 2 * 8 * 8 * 64 * 64
    assert table.ms(core) > 0 and table.ms(lt.LayerSpec("attention", 2, 8, spatial=(64,))) < table.ms(core) * 1.5


def test_the_estimate_prices_each_projection_at_the_knobs_counts(tmp_path):
    model = _model(llama_gqa)
    data = _data(llama_gqa)
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    probe, _ = dependency.build_pruner(model, data.spec, imp, ratio=0.0, scope="uniform", iterative_steps=1,
                                       round_to=None, max_layer_ratio=1.0, ignored=dependency.ignored_modules(model, []))
    lay = tf.layout(model, probe)
    assert (lay.heads, lay.unit, lay.width, len(lay.stack)) == (8, 2, 96, 2)
    x = data.train.take(slice(0, 1)).x
    knobs = tf.knobs(lay, 2, 8, 0.9)
    assert [(k.name, k.channels, k.step, k.floor) for k in knobs] == [("heads", 8, 2, 2), ("mlp", 96, 8, 16),
                                                                      ("layers", 2, 1, 1)]
    est = tf.Estimate(lay, lt.layer_specs(model, x), lt.LatencyTable(1, 1), knobs, 8, count_macs(model, data.spec)[0])
    a = lay.attentions[0]
    q, k, v = a.projections
    layer = model.model.layers[0]
    counts = {"heads": 6, "mlp": 64, "layers": 2}
    # 6 query heads of 8 features; grouped-query attention keeps its 2 key/value heads
    assert est.spec(q, counts).cout == 48 and est.spec(k, counts).cout == est.spec(v, counts).cout == 16
    assert est.spec(layer.self_attn.o_proj, counts).cin == 48
    assert est.spec(layer.mlp.up_proj, counts).cout == est.spec(layer.mlp.gate_proj, counts).cout == 64
    assert est.spec(layer.mlp.down_proj, counts).cin == 64
    assert est.macs() == count_macs(model, data.spec)[0]  # dense: torch-pruning's count exactly
    assert est.macs({"heads": 8, "mlp": 96, "layers": 1}) < est.macs() < 2 * est.macs({"heads": 8, "mlp": 96, "layers": 1})


@pytest.mark.parametrize(("builder", "with_layers"), [(bert, False), (llama_gqa, True)], ids=["bert", "llama_gqa"])
def test_a_macs_target_keeps_every_layer_alike_and_the_model_file_and_onnx_follow(builder, with_layers, tmp_path):
    model, data = _model(builder), _data(builder)
    dense = count_macs(model, data.spec)[0]
    before = attention.find(model)[0]
    out = METHODS["channel"].apply(model, Config(allocation="latency", ratio=None, target_macs_reduction=2.0,
                                                 latency_layers=with_layers), _ctx(builder, tmp_path))
    pruned = out.model.eval()
    assert dense / count_macs(pruned, data.spec)[0] >= 2.0  # on torch-pruning's count
    report = out.report["latency_allocation"]
    assert set(report["knobs"]) == {"heads", "mlp"} | ({"layers"} if with_layers else set())
    assert report["counted_macs_reduction"] >= 2.0
    # the path: each cut with its estimated time and the calibration loss measured there, the dense model first
    assert report["path"][0]["knob"] is None and all(c["loss"] is not None for c in report["path"])
    macs = [c["macs"] for c in report["path"]]  # every cut removes MACs (not always time: a count may price slower)
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)
    found = attention.find(pruned)
    assert len({(a.heads, a.kv_heads) for a in found}) == 1  # every layer alike: one config describes them
    assert found[0].heads == report["keep"]["heads"] and len(found) == report["keep"].get("layers", 2)
    if before.kv_heads < before.heads:
        assert found[0].kv_heads == before.kv_heads and found[0].heads % before.kv_heads == 0
    widths = {attention.mlp_width(m) for m in pruned.modules()} - {None}
    assert len(widths) == 1 and widths.pop() % 8 == 0
    assert lt.LatencyTable.load(tmp_path / "table.json", 1, 1).entries  # the table is kept for the next run
    path = tmp_path / "m.pt"
    checkpoint.save_model(path, pruned, arch=f"tests.test_transformers:{builder.__name__}", kwargs={},
                          input_shape=data.input_shape, num_classes=data.num_classes, edits=out.edits,
                          example=data.example)
    loaded, _ = checkpoint.load_model(path, arch=f"tests.test_transformers:{builder.__name__}")
    x = data.test.take(slice(0, 4)).x
    with torch.no_grad():
        assert torch.equal(forward(loaded.eval(), x), forward(pruned, x))
    export_onnx(pruned, data.spec, tmp_path / "m.onnx", opset=17)
    assert parity(pruned, tmp_path / "m.onnx", data.test.x, atol=1e-4, rtol=1e-3).score <= 1


def test_a_speedup_target_is_met_on_measured_candidates(tmp_path):
    model = _model(llama_gqa)
    # heads and MLP channels alone do not make this tiny decoder 1.2x faster: its layers are a knob here
    out = METHODS["channel"].apply(model, Config(allocation="latency", ratio=None, target_speedup=1.2,
                                                 latency_layers=True), _ctx(llama_gqa, tmp_path))
    report = out.report["latency_allocation"]
    assert report["reached"] and report["rounds"]
    # accepted on the interval's lower bound of alternate timings against the dense model, never one timing
    assert report["speedup"]["low"] >= 1.2 and report["speedup"]["rounds"] >= 5
    assert report["calibration"]["dense_measured_ms"] > 0


def test_the_hidden_size_is_not_a_knob_of_the_latency_allocation(tmp_path):
    with pytest.raises(PruningError) as err:
        METHODS["channel"].apply(_model(bert), Config(allocation="latency", ratio=None, target_macs_reduction=2.0,
                                                      hidden=True), _ctx(bert, tmp_path))
    assert err.value.field == "hidden"
