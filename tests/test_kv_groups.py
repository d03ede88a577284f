"""Whole key/value groups out of grouped-query attention (``prune.kv_groups``): a key/value head goes with its query
heads, the model file replays it, the config follows, ONNX has parity."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from pruning import attention, checkpoint, hf
from pruning.data import forward
from pruning.errors import ModelError
from pruning.methods import METHODS, Context
from pruning.runtime.export import export_onnx, parity
from tests.test_transformers import _data, mistral_gqa, qwen3_gqa

pytestmark = pytest.mark.xdist_group("test_transformers")


@pytest.mark.parametrize("builder", [mistral_gqa, qwen3_gqa], ids=lambda b: b.__name__)
def test_whole_key_value_groups_go_with_their_query_heads_and_the_model_rebuilds(builder, tmp_path):
    torch.manual_seed(0)
    model, data = builder().eval(), _data(builder)
    dense = copy.deepcopy(model)
    ctx = Context(data=data, seed=0, device="cpu", build=builder, latency_table=tmp_path / "t.json", opset=17)
    out = METHODS["channel"].apply(model, METHODS["channel"].Config(kv_groups=True), ctx)
    pruned = out.model.eval()
    # 0.35 of 2 groups rounds to one whole group of 4 query heads per layer, and the report says so
    assert [(a.heads, a.kv_heads) for a in attention.find(pruned)] == [(4, 1), (4, 1)]
    assert any("(2 key/value groups of 4 query heads): 1 removed (0.5 of the groups; 0.35 asked)" in n
               for n in out.report["plan_notes"])
    # the kept group is the dense one: its key/value head and its query heads, weights unchanged
    removed = out.report["kv_groups_removed"]["model.layers.0.self_attn"]
    kept = ({0, 1} - set(removed)).pop()
    before, after = dense.model.layers[0].self_attn, pruned.model.layers[0].self_attn
    assert torch.equal(after.k_proj.weight, before.k_proj.weight[kept * 8:(kept + 1) * 8])
    assert torch.equal(after.q_proj.weight, before.q_proj.weight[kept * 32:(kept + 1) * 32])
    assert torch.equal(after.o_proj.weight, before.o_proj.weight[:, kept * 32:(kept + 1) * 32])
    x = data.test.take(slice(0, 4)).x
    path = tmp_path / "m.pt"
    arch = f"tests.test_transformers:{builder.__name__}"
    checkpoint.save_model(path, pruned, arch=arch, kwargs={}, input_shape=None, num_classes=data.num_classes,
                          edits=out.edits, example=data.example)
    loaded, _ = checkpoint.load_model(path, arch=arch)
    assert hf.rebuilds(pruned)  # the config states heads, key/value heads and head size
    pruned.save_pretrained(tmp_path / "hf")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(forward(loaded.eval(), x), forward(pruned, x))
        assert torch.allclose(forward(reloaded, x), forward(pruned, x), atol=1e-5)
    export_onnx(pruned, data.spec, tmp_path / "m.onnx", opset=17)
    assert parity(pruned, tmp_path / "m.onnx", data.test.x, atol=1e-4, rtol=1e-3).score <= 1


def test_a_model_file_naming_groups_the_model_does_not_have_is_refused(tmp_path):
    torch.manual_seed(0)
    model, data = mistral_gqa().eval(), _data(mistral_gqa)
    path = tmp_path / "m.pt"
    arch = "tests.test_transformers:mistral_gqa"
    for removed in ({"model.layers.0.self_attn": [0, 1]}, {"model.layers.9.self_attn": [0]},
                    {"model.layers.0.self_attn": ["0"]}):
        checkpoint.save_model(path, model, arch=arch, kwargs={}, input_shape=None, num_classes=data.num_classes,
                              edits=[{"kind": "kv_groups", "removed": removed}], example=data.example)
        with pytest.raises(ModelError):
            checkpoint.load_model(path, arch=arch)
