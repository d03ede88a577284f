"""Latency allocation: the per-layer ORT table, the greedy allocation, and the prune stage with allocation: latency."""

import copy
import json

import pytest
import torch
import torch_pruning as tp

from pruning import dependency
from pruning.allocation import latency as lat
from pruning.allocation import latency_table as lt
from pruning.counting import count_macs
from pruning.zoo import build_model
from tests.conftest import TINY, merge, write_params

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model("resnet", {"widths": [16, 32, 64], "blocks": [1, 1, 1]}, SHAPE, 10).eval()


def test_layer_specs_see_every_conv_and_linear_with_its_input_size(net):
    specs = lt.layer_specs(net, SHAPE)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert set(specs) == set(convs)
    stem = specs[convs[0]]
    assert stem.kind == "conv" and stem.cin == 3 and stem.spatial == (32, 32)
    # the layers' MACs add up to torch-pruning's count, less what BatchNorm / pooling / adds cost
    total = sum(s.macs() for s in specs.values())
    counted, _ = count_macs(net, SHAPE)
    assert 0.95 * counted <= total <= counted


def test_table_measures_once_keeps_context_and_charges_more_for_bigger_layers(tmp_path):
    table = lt.LatencyTable(batch=1, threads=1)
    big = lt.LayerSpec("conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (32, 32))
    small = big.with_channels(64, 16)
    t_big, t_small = table.ms(big), table.ms(small)
    assert t_big > t_small > 0  # 4x the MACs
    assert table.measured == 2
    table.ms(big)
    assert table.measured == 2  # cached, not measured again
    path = tmp_path / "table.json"
    table.save(path)
    again = lt.LatencyTable.load(path, batch=1, threads=1)
    assert again.entries == table.entries
    assert lt.LatencyTable.load(path, batch=8, threads=1).entries == {}  # another batch size: another table
    assert json.loads(path.read_text())["version"] == lt.TABLE_VERSION


def test_old_or_noisy_table_entries_are_measured_again_steady_ones_reused(tmp_path):
    import time

    spec = lt.LayerSpec("conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (32, 32))
    other = spec.with_channels(64, 32)
    third = spec.with_channels(32, 32)
    now = time.time()
    table = lt.LatencyTable(batch=1, threads=1)
    table.entries = {spec.key(): [99.0, 1.05, now],  # steady and fresh: trusted as it is
                     other.key(): [99.0, 1.05, now - (lt.MAX_AGE_DAYS + 1) * 86_400],  # too old
                     third.key(): [99.0, 4.0, now]}  # measured while the machine was busy
    path = tmp_path / "table.json"
    table.save(path)
    table = lt.LatencyTable.load(path, batch=1, threads=1)
    assert table.ms(spec) == 99.0
    assert table.ms(other) < 99.0 and table.ms(third) < 99.0  # measured afresh (a real 64x32x32 conv: < 99 ms)
    assert table.measured == 2 and table.stale == 2
    ms, spread, at = table.entries[other.key()]
    assert spread >= 1.0 and at >= now


def test_depthwise_spec_keeps_groups_equal_to_channels():
    dw = lt.LayerSpec("conv", 96, 96, (3, 3), (1, 1), (1, 1), (1, 1), 96, (16, 16))
    assert dw.depthwise
    cut = dw.with_channels(64, 64)
    assert cut.groups == 64 and cut.macs() == 64 * 9 * 16 * 16


def test_allocation_reaches_the_macs_target_on_the_channel_grid(net):
    table = lt.LatencyTable(batch=1, threads=1)
    ignored = dependency.ignored_modules(net, [])
    alloc = lat.allocate(net, SHAPE, tp.importance.GroupMagnitudeImportance(p=2), ignored, table, step=8,
                         max_layer_ratio=0.9, target_macs_reduction=2.0)
    assert alloc.report["macs_reduction"] >= 2.0
    assert all(keep % 8 == 0 and 8 <= keep <= channels for channels, keep in alloc.keep.values())
    assert any(keep < channels for channels, keep in alloc.keep.values())
    # torch-pruning, given the ratio map, keeps exactly the allocated counts
    model = copy.deepcopy(net)
    twin = dict(zip(net.modules(), model.modules(), strict=True))
    pruner, _ = dependency.build_pruner(model, SHAPE, tp.importance.GroupMagnitudeImportance(p=2), ratio=0.0,
                                  scope="uniform", iterative_steps=1, round_to=None, max_layer_ratio=1.0,
                                  ignored=dependency.ignored_modules(model, []),
                                  ratio_dict={twin[m]: r for m, r in alloc.ratios.items()})
    dependency.prune_step(pruner, model)
    names = dict(model.named_modules())
    for name, (_, keep) in alloc.keep.items():
        assert names[name].out_channels == keep
    assert sum(s.macs() for s in lt.layer_specs(model, SHAPE).values()) == alloc.macs  # the search's own count
    x = torch.randn(2, *SHAPE)
    assert model(x).shape == net(x).shape


def test_prune_stage_with_latency_allocation_writes_the_table_and_reaches_the_target(trained, in_tmp):
    import shutil

    from pruning.config import load_config
    from pruning.stages.prune import run as run_prune

    for sub in ("data", "models", "reports"):
        shutil.copytree(trained / sub, in_tmp / sub)
    cfg = load_config(write_params(in_tmp, {"prune": {"allocation": "latency", "ratio": None,
                                                      "target_macs_reduction": 2.0, "round_to": 4,
                                                      "iterative_steps": 1}}))
    result = run_prune(cfg)
    assert result.macs_reduction >= 2.0
    report = json.loads((in_tmp / cfg.paths.prune_report).read_text())
    assert report["allocation"] == "latency"
    assert report["latency_allocation"]["table_measured"] > 0
    keep = report["latency_allocation"]["keep"]
    assert all(k % 4 == 0 for _, k in keep.values())
    table = json.loads((in_tmp / cfg.paths.latency_table).read_text())
    assert sum(len(t) for t in table["tables"].values()) == report["latency_allocation"]["table_entries"]
    # the table keeps per-layer timings with their conditions, never whole-network timings
    assert "networks" not in table
    assert all(len(v) == 3 for t in table["tables"].values() for v in t.values())
    # a second run reuses the table: only entries too noisy to trust are measured again
    first = report["latency_allocation"]["table_measured"]
    run_prune(cfg)
    again = json.loads((in_tmp / cfg.paths.prune_report).read_text())["latency_allocation"]
    assert again["table_measured"] < first


def test_latency_allocation_params_are_validated():
    from pruning.config import parse_config

    with pytest.raises(Exception, match="set ratio to null"):
        parse_config(merge(TINY, {"prune": {"allocation": "latency", "target_speedup": 2.0}}))
    with pytest.raises(Exception, match="needs allocation: latency"):
        parse_config(merge(TINY, {"prune": {"target_speedup": 2.0}}))
    cfg = parse_config(merge(TINY, {"prune": {"allocation": "latency", "ratio": None, "target_speedup": 2.0}}))
    assert cfg.prune.target_speedup == 2.0
