"""Transformers as users bring them — a BERT-like encoder, a ViT and a decoder with grouped-query attention, Hugging
Face classes built from tiny configs with random weights (no download) — pruned by the default method config: whole
heads and MLP channels go, the hidden size stays (a BERT's follows its heads), the attributes and config that describe
the shapes follow, and the model runs, rebuilds from its model file and from ``save_pretrained``, and exports to ONNX
with dynamic batch and sequence axes and parity."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import transformers

from pruning import attention, checkpoint, hf, layers
from pruning.counting import count_macs
from pruning.data import Data, Split, forward
from pruning.errors import GraphTraceError
from pruning.methods import METHODS, Context, depth
from pruning.runtime.export import export_onnx, parity
from pruning.runtime.quantize import quantize, resolved_mode
from pruning.runtime.session import run, session

pytestmark = pytest.mark.xdist_group("test_transformers")  # one worker: each family is pruned once

VOCAB, SEQ, CLASSES = 100, 12, 3


def bert(**kwargs: Any) -> torch.nn.Module:
    config = transformers.BertConfig(**{"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                                        "num_attention_heads": 4, "intermediate_size": 64,
                                        "max_position_embeddings": 32, "num_labels": CLASSES, **kwargs})
    return transformers.BertForSequenceClassification(config)


def vit(**kwargs: Any) -> torch.nn.Module:
    config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=10, **kwargs)
    return transformers.ViTForImageClassification(config)


def llama_gqa(**kwargs: Any) -> torch.nn.Module:
    """A Llama decoder: 8 query heads sharing 2 key/value heads (grouped-query attention)."""
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                                      num_labels=CLASSES, pad_token_id=0, **kwargs)
    return transformers.LlamaForSequenceClassification(config)


def mistral_gqa(**kwargs: Any) -> torch.nn.Module:
    """A Mistral decoder (grouped-query attention, its head size stated in its config)."""
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                        num_key_value_heads=2, head_dim=8, intermediate_size=96,
                                        max_position_embeddings=64, num_labels=CLASSES, pad_token_id=0, **kwargs)
    return transformers.MistralForSequenceClassification(config)


def qwen3_gqa(**kwargs: Any) -> torch.nn.Module:
    """A Qwen3 decoder: grouped-query attention with per-head query/key norms (q_norm, k_norm)."""
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=2, head_dim=8, intermediate_size=96,
                                      max_position_embeddings=64, num_labels=CLASSES, pad_token_id=0, **kwargs)
    return transformers.Qwen3ForSequenceClassification(config)


def _tokens(n: int, seq: int = SEQ, seed: int = 0) -> Split:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq), generator=gen)
    y = (ids < VOCAB // 3).sum(1).clamp(max=CLASSES - 1)
    return Split({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, y)


def _data(builder) -> Data:
    if builder is vit:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(96, 1, 8, 8, generator=gen)
        y = (x.mean((1, 2, 3)) > 0).long()
        return Data(Split(x[:64], y[:64]), Split(x[64:], y[64:]), (1, 8, 8), 10)
    return Data(_tokens(64), _tokens(32, seed=1), None, CLASSES)


FAMILIES = [bert, vit, llama_gqa, mistral_gqa, qwen3_gqa]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The default method config's outcome per family, computed once."""
    cache: dict[Any, Any] = {}

    def get(builder):
        if builder not in cache:
            torch.manual_seed(0)
            dense = builder().eval()
            model = builder().eval()
            model.load_state_dict(dense.state_dict())
            data = _data(builder)
            ctx = Context(data=data, seed=0, device="cpu", build=builder,
                          latency_table=tmp_path_factory.mktemp("t") / "t.json", opset=17)
            cache[builder] = dense, METHODS["channel"].apply(model, METHODS["channel"].Config(), ctx), data
        return cache[builder]
    return get


def _reloaded(model: torch.nn.Module, data: Data, tmp_path, auto: Any = None) -> torch.nn.Module:
    """``model`` written by ``save_pretrained`` and read back by ``from_pretrained``; its outputs checked."""
    model.eval().save_pretrained(tmp_path / "hf")
    reloaded = (auto or transformers.AutoModelForSequenceClassification).from_pretrained(tmp_path / "hf").eval()
    x = data.test.take(slice(0, 4)).x
    with torch.no_grad():
        assert torch.allclose(forward(reloaded, x), forward(model, x), atol=1e-5)
    return reloaded


@pytest.mark.parametrize("builder", FAMILIES, ids=lambda b: b.__name__)
def test_heads_and_mlp_channels_go_the_hidden_size_stays_or_follows_the_heads_and_the_model_file_rebuilds_it(
        builder, pruned, tmp_path):
    dense, out, data = pruned(builder)
    model = out.model.eval()
    before, after = attention.find(dense), attention.find(model)
    cfg = METHODS["channel"].Config()
    for a, b in zip(before, after, strict=True):
        assert b.heads < a.heads and b.head_dim == a.head_dim
        # grouped-query attention keeps its key/value heads; plain multi-head attention loses keys/values with queries
        assert b.kv_heads == (a.kv_heads if a.kv_heads < a.heads else b.heads)
        # the module's own attributes follow the weights: its forward and its config writers read them
        assert getattr(b.module, "num_key_value_groups", b.heads // b.kv_heads) == b.heads // b.kv_heads
    # the residual stream is untouched, except a BERT's: its class derives the head size from it (hidden: auto)
    hidden = after[0].heads * after[0].head_dim if builder is bert else dense.config.hidden_size
    assert all(a.projections[0].in_features == hidden == model.config.hidden_size for a in after)
    widths = {m.out_features for n, m in model.named_modules() if n.endswith(("intermediate.dense", "fc1", "up_proj"))}
    assert len(widths) == 1 and widths.pop() < dense.config.intermediate_size  # every MLP alike: a config states it
    assert count_macs(model, data.spec)[0] < 0.85 * count_macs(dense, data.spec)[0]
    x = data.test.take(slice(0, 4)).x
    with torch.no_grad():
        assert forward(model, x).shape == forward(dense, x).shape
    assert abs(out.report["achieved_ratio"] - cfg.ratio) <= 0.15  # the MLP channels: the asked share, on the grid
    path = tmp_path / "m.pt"
    checkpoint.save_model(path, model, arch=f"tests.test_transformers:{builder.__name__}", kwargs={},
                          input_shape=data.input_shape, num_classes=data.num_classes, edits=out.edits,
                          example=data.example)
    loaded, _ = checkpoint.load_model(path, arch=f"tests.test_transformers:{builder.__name__}")
    with torch.no_grad():
        assert torch.equal(forward(loaded, x), forward(model, x))
    assert [(a.heads, a.kv_heads) for a in attention.find(loaded)] == [(a.heads, a.kv_heads) for a in after]


def test_a_grouped_query_request_that_cannot_be_met_is_rounded_to_whole_groups_and_reported(pruned):
    _, out, _ = pruned(llama_gqa)
    heads = out.report["head_plan"]
    # 0.35 of 8 query heads in 2 key/value groups of 4: one head of each group (0.25), not 2.8 heads
    assert [(r["heads"], r["keep"], r["kv_heads"]) for r in heads] == [(8, 6, 2)] * 2
    assert any("grouped-query attention" in n and "0.25 of the heads" in n for n in out.report["plan_notes"])


@pytest.mark.parametrize("builder", [mistral_gqa, qwen3_gqa], ids=lambda b: b.__name__)
def test_a_pruned_decoder_whose_config_states_its_head_size_reloads_with_save_pretrained(builder, pruned, tmp_path):
    _, out, data = pruned(builder)
    reloaded = _reloaded(out.model, data, tmp_path)
    config = reloaded.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (6, 2, 8)
    assert config.intermediate_size == attention.find(reloaded)[0].module.config.intermediate_size < 96


def test_a_head_pruned_vit_has_its_head_size_stated_and_reloads_with_save_pretrained(pruned, tmp_path):
    _, out, data = pruned(vit)
    assert hf.rebuilds(out.model)  # ViT's config derives the head size unless it states one, which its class reads
    reloaded = _reloaded(out.model, data, tmp_path, transformers.AutoModelForImageClassification)
    assert (reloaded.config.num_attention_heads, reloaded.config.head_dim) == (3, 8)


def test_a_head_pruned_bert_reloads_with_save_pretrained_by_default(pruned, tmp_path):
    # BertConfig derives the head size from hidden_size / num_attention_heads and its class reads nothing else
    # (transformers 5 dropped config.pruned_heads): by default (hidden: auto) its hidden size follows its heads
    dense, out, data = pruned(bert)
    model = out.model.eval()
    assert (model.config.hidden_size, model.config.num_attention_heads) == (24, 3) and hf.rebuilds(model)
    assert any("the hidden size follows the heads" in n for n in out.report["plan_notes"])
    _reloaded(model, data, tmp_path)


def _pruned_bert(tmp_path, config: dict[str, Any], **shape: Any) -> tuple[torch.nn.Module, Any, Data]:
    """A BERT of ``shape`` (the dense model, the channel method's outcome with ``config``, the data)."""
    def build() -> torch.nn.Module:
        return bert(**shape)

    torch.manual_seed(0)
    data, dense = _data(bert), build().eval()
    ctx = Context(data=data, seed=0, device="cpu", build=build, latency_table=tmp_path / "t.json", opset=17)
    return dense, METHODS["channel"].apply(copy.deepcopy(dense), METHODS["channel"].Config(**config), ctx), data


def test_a_macs_target_is_not_passed_far_by_a_whole_head_more_when_one_fewer_and_more_mlp_channels_reach_it(tmp_path):
    # 4 heads of 16 whose hidden size follows them: the ratio search's first ratio past 2x (0.375) removes 2 heads
    # per layer and half the hidden size (3.4x); one head and as many more MLP channels as it takes land at 2.06x
    dense, out, data = _pruned_bert(tmp_path, {"ratio": None, "target_macs_reduction": 2.0}, hidden_size=64,
                                    intermediate_size=256)
    reached = count_macs(dense, data.spec)[0] / count_macs(out.model, data.spec)[0]
    assert 2.0 <= reached < 2.2 and out.report["head_ratio"] == 0.25
    assert [r["keep"] for r in out.report["head_plan"]] == [3, 3] and out.model.config.hidden_size == 48


@pytest.mark.parametrize("builder", [bert, llama_gqa], ids=lambda b: b.__name__)
def test_a_config_that_cannot_state_the_pruned_heads_is_found_out(builder, pruned, tmp_path):
    # a BERT whose hidden size is kept (hidden: false) cannot say it has fewer heads of the same size;
    # LlamaConfig refuses 6 heads for a hidden size of 64: the prune stage says save_pretrained would not reload
    if builder is bert:
        dense, out, _ = _pruned_bert(tmp_path, {"hidden": False})
        # left as it was, not half-stated
        assert out.model.config.num_attention_heads == 4 and getattr(out.model.config, "head_dim", None) is None
        assert out.model.config.hidden_size == dense.config.hidden_size
    else:
        dense, out, _ = pruned(builder)
    assert hf.rebuilds(dense) and hf.rebuilds(out.model) is False
    assert hf.rebuilds(torch.nn.Linear(2, 2)) is None  # no Hugging Face model: nothing to say


def test_a_bert_whose_hidden_size_is_pruned_too_keeps_heads_times_head_size_and_reloads(tmp_path):
    # BertConfig derives the head size from hidden_size / num_attention_heads: with prune.hidden the hidden size
    # follows the heads, so that the pruned config still describes the model
    _, out, data = _pruned_bert(tmp_path, {"hidden": True}, hidden_size=120, num_attention_heads=10)
    model = out.model.eval()
    # 0.35 of 10 heads of 12 features: 4 go; the hidden size 6 x 12 = 72, not the ratio's 80 on the grid of 8
    assert (model.config.hidden_size, model.config.num_attention_heads) == (72, 6) and hf.rebuilds(model)
    assert any("the hidden size follows the heads" in n for n in out.report["plan_notes"])
    _reloaded(model, data, tmp_path)


@pytest.mark.parametrize("builder", [bert, llama_gqa, mistral_gqa, qwen3_gqa], ids=lambda b: b.__name__)
def test_a_pruned_text_model_exports_with_dynamic_batch_and_sequence_axes_and_parity(builder, pruned, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's tools write debugging files into the working directory when they give up
    _, out, data = pruned(builder)
    model = out.model.eval()
    path = tmp_path / "m.onnx"
    export_onnx(model, data.spec, path, opset=17)
    assert parity(model, path, data.test.x, atol=1e-4, rtol=1e-3).score <= 1
    longer = _tokens(3, seq=SEQ + 7, seed=2).x  # another batch size and another text length, one file
    longer["attention_mask"][0, 9:] = 0  # and padding: the file applies the mask (not traced away as all ones)
    longer["attention_mask"][1, 3:] = 0
    with torch.no_grad():
        np.testing.assert_allclose(run(session(path), longer), forward(model, longer).numpy(), atol=1e-4, rtol=1e-3)
    # INT8 as ONNX Runtime users quantize transformers on CPU: dynamic, MatMul weights in int8 (a graph without
    # convolutions: quantize.mode auto's choice); it runs at any length and stays near fp32
    assert resolved_mode(path, "auto") == "dynamic"
    int8 = tmp_path / "m.int8.onnx"
    quantize(path, int8, "dynamic", [])
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(int8)).graph.node}
    fp32, q = run(session(path), longer), run(session(int8), longer)
    assert np.abs(q - fp32).max() < 0.1 * np.abs(fp32).max()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx"]  # nothing else left behind


def test_global_scope_on_attention_is_one_line_naming_the_key(tmp_path):
    data = _data(bert)
    ctx = Context(data=data, seed=0, device="cpu", build=bert, latency_table=tmp_path / "t.json", opset=17)
    with pytest.raises(GraphTraceError, match="scope uniform") as err:
        METHODS["channel"].apply(bert().eval(), METHODS["channel"].Config(scope="global"), ctx)
    assert err.value.field == "scope"


@pytest.mark.parametrize("builder", FAMILIES, ids=lambda b: b.__name__)
def test_the_depth_method_drops_a_whole_layer_that_replays_from_the_model_file_and_reloads_with_save_pretrained(
        builder, tmp_path):
    torch.manual_seed(0)
    dense, data = builder().eval(), _data(builder)
    ctx = Context(data=data, seed=0, device="cpu", build=builder, latency_table=tmp_path / "t.json", opset=17)
    out = METHODS["depth"].apply(copy.deepcopy(dense), METHODS["depth"].Config(), ctx)  # one layer, loss_change
    (name,) = out.report["removed_blocks"]
    assert out.edits == [{"kind": "layers", "names": [name]}] and name in layers.find(dense)
    model = out.model.eval()
    assert len(layers.find(model)) == 1 and model.config.num_hidden_layers == 1
    assert out.steps[1]["macs"] < 0.6 * out.steps[0]["macs"]  # a layer is nearly half of a two-layer model
    x = data.test.take(slice(0, 4)).x
    path = tmp_path / "m.pt"
    arch = f"tests.test_transformers:{builder.__name__}"
    checkpoint.save_model(path, model, arch=arch, kwargs={}, input_shape=data.input_shape,
                          num_classes=data.num_classes, edits=out.edits, example=data.example)
    replayed, _ = checkpoint.load_model(path, arch=arch)
    model.save_pretrained(tmp_path / "hf")  # no head pruned: every family's config describes it
    reloaded = type(model).from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(forward(replayed, x), forward(model, x))
        assert torch.allclose(forward(reloaded, x), forward(model, x), atol=1e-5)


@pytest.mark.parametrize("criterion", ["loss_change", "norm", "block_influence"])
def test_a_layer_that_passes_its_input_through_scores_zero_and_goes_first(criterion):
    torch.manual_seed(0)
    model, data = llama_gqa().eval(), _data(llama_gqa)
    identity = model.model.layers[0]  # pre-norm: with both output projections zero, h -> h + 0 + 0
    torch.nn.init.zeros_(identity.self_attn.o_proj.weight)
    torch.nn.init.zeros_(identity.mlp.down_proj.weight)
    sample = data.train.take(slice(0, 32))
    scores = depth.layer_scores(model, sample, criterion)
    assert scores["model.layers.0"] == pytest.approx(0.0, abs=1e-6) and abs(scores["model.layers.1"]) > 1e-4
    # random weights: removing the other layer may lower the loss, which loss_change ranks first, rightly
    pruned, names, _ = depth.prune_depth(model, sample, 1, "block_influence" if criterion == "loss_change" else
                                         criterion, data.spec)
    assert names == ["model.layers.0"] and pruned.model.layers[0].self_attn.layer_idx == 0


def test_the_channel_method_drops_layers_first_then_prunes_heads(tmp_path):
    torch.manual_seed(0)
    data = _data(mistral_gqa)
    ctx = Context(data=data, seed=0, device="cpu", build=mistral_gqa, latency_table=tmp_path / "t.json", opset=17)
    out = METHODS["channel"].apply(mistral_gqa().eval(), METHODS["channel"].Config(depth_blocks=1), ctx)
    assert [e["kind"] for e in out.edits] == ["layers", "channels"]
    assert [(a.heads, a.kv_heads) for a in attention.find(out.model)] == [(6, 2)]
    out.model.save_pretrained(tmp_path / "hf")
    config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (1, 6, 2)


def test_feature_distillation_pulls_the_pruned_model_s_final_hidden_states_to_the_dense_model_s(pruned):
    from pruning.training import Distill, Optim, fit

    dense, out, data = pruned(vit)  # its hidden size is kept by default (a BERT's follows its heads)
    x = data.test.take(slice(0, 16)).x
    last = {m: list(layers.find(m).values())[-1] for m in (out.model, dense)}  # the ViT's final hidden states

    def distance(model: torch.nn.Module) -> float:
        seen = []
        handles = [last[m].register_forward_hook(lambda _, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
                   for m in (out.model, dense)]
        with torch.no_grad():
            forward(model.eval(), x), forward(dense.eval(), x)
        for h in handles:
            h.remove()
        return float(torch.nn.functional.mse_loss(seen[0], seen[1]))

    far = {}
    for weight in (0.0, 50.0):
        state = copy.deepcopy(out.model.state_dict())
        fit(out.model, data.train, Optim(3, 16, 1e-3, optimizer="adamw"), 0, "kd",
            distill=Distill(dense, 4.0, 0.7, weight))
        far[weight] = distance(out.model)
        out.model.load_state_dict(state)  # the shared fixture's model as it was
        assert not last[out.model]._forward_hooks and not last[dense]._forward_hooks  # the hooks are gone
    assert far[50.0] < 0.5 * far[0.0]


def test_feature_distillation_between_classifiers_of_different_widths_is_one_line():
    from pruning.errors import ConfigError
    from pruning.stages.finetune import _check_features

    narrow = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    wide = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 3))
    x = torch.zeros(1, 4)
    _check_features(narrow, wide, 0.0, x)  # off: nothing to compare
    _check_features(wide, copy.deepcopy(wide), 1.0, x)
    with pytest.raises(ConfigError, match=r'"finetune.distill.features".*differ \(\(8,\) vs \(16,\)\)'):
        _check_features(narrow, wide, 1.0, x)


@pytest.mark.parametrize("builder", [bert, vit, mistral_gqa], ids=lambda b: b.__name__)
def test_the_hidden_size_is_pruned_on_request_and_the_model_replays_exports_and_reloads(builder, tmp_path):
    torch.manual_seed(0)
    dense, data = builder().eval(), _data(builder)
    ctx = Context(data=data, seed=0, device="cpu", build=builder, latency_table=tmp_path / "t.json", opset=17)
    out = METHODS["channel"].apply(copy.deepcopy(dense), METHODS["channel"].Config(hidden=True), ctx)
    model = out.model.eval()
    hidden = dense.config.hidden_size
    widths = {a.projections[0].in_features for a in attention.find(model)}
    # 0.35 of the residual stream on the round_to 8 grid (32 -> 24, 64 -> 40), whole heads as by default
    assert widths == {model.config.hidden_size} == {8 * round(hidden * 0.65 / 8)}
    assert all(a.heads < b.heads for a, b in zip(attention.find(model), attention.find(dense), strict=True))
    x = data.test.take(slice(0, 4)).x
    arch = f"tests.test_transformers:{builder.__name__}"
    checkpoint.save_model(tmp_path / "m.pt", model, arch=arch, kwargs={}, input_shape=data.input_shape,
                          num_classes=data.num_classes, edits=out.edits, example=data.example)
    replayed, _ = checkpoint.load_model(tmp_path / "m.pt", arch=arch)
    export_onnx(model, data.spec, tmp_path / "m.onnx", opset=17)
    with torch.no_grad():
        assert torch.equal(forward(replayed, x), forward(model, x))
    assert parity(model, tmp_path / "m.onnx", data.test.x, atol=1e-4, rtol=1e-3).score <= 1
    if builder is mistral_gqa:  # a config stating head_dim describes the narrower model
        _reloaded(model, data, tmp_path)


def test_iterative_steps_fine_tune_with_the_optimizer_asked(monkeypatch, tmp_path):
    # SGD at the CNN defaults does not train a transformer: the steps between iterative pruning steps use AdamW here
    from pruning.methods import channel

    used = []
    real = channel.fit
    monkeypatch.setattr(channel, "fit", lambda *a, **k: used.append(a[3]) or real(*a, **k))
    torch.manual_seed(0)
    ctx = Context(data=_data(bert), seed=0, device="cpu", build=bert, latency_table=tmp_path / "t.json", opset=17)
    cfg = METHODS["channel"].Config(iterative_steps=2, step_finetune_epochs=1, step_lr=1e-3, step_optimizer="adamw")
    out = METHODS["channel"].apply(bert().eval(), cfg, ctx)
    assert [(o.optimizer, o.lr, o.epochs) for o in used] == [("adamw", 1e-3, 1)]  # between the two steps only
    assert [a.heads for a in attention.find(out.model)] == [3, 3]
