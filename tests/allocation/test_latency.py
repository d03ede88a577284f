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
from pruning.errors import PruningError
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


def test_speedup_target_is_met_on_the_measured_latency_or_refused(net):
    table = lt.LatencyTable(batch=8, threads=1)
    ignored = dependency.ignored_modules(net, [])
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    calls = []

    def measure(ratios):
        # a synthetic, deterministic "measurement" (a fixed cost plus time per MAC of the really pruned network): the
        # test is about the search being steered by what measure() says, not about this machine's speed — a real
        # ORT timing here failed CI on a busy machine (1.21x best against 1.25x). Real timings: bench latency.
        counted, _ = count_macs(lt.pruned_copy(net, SHAPE, ratios, []), SHAPE)
        calls.append(0.2 + counted / 2e7)
        return calls[-1]

    alloc = lat.allocate(net, SHAPE, imp, ignored, table, step=8, max_layer_ratio=0.9, target_speedup=1.25,
                         measure=measure)
    assert alloc.report["reached"] is True
    chosen = [r for r in alloc.report["rounds"] if r["macs_reduction"] == pytest.approx(alloc.report["macs_reduction"])]
    assert chosen and chosen[0]["speedup"] >= 1.25 / 1.02  # measured, not estimated
    with pytest.raises(PruningError, match="out of reach"):
        lat.allocate(net, SHAPE, imp, ignored, table, step=8, max_layer_ratio=0.5, target_speedup=50.0,
                     measure=measure, max_rounds=2)
    # every network measurement is kept in the table: the same search again measures nothing
    before = len(calls)
    again = lat.allocate(net, SHAPE, imp, ignored, table, step=8, max_layer_ratio=0.9, target_speedup=1.25,
                         measure=measure)
    assert len(calls) == before and again.keep == alloc.keep


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
    # a second run reuses the table: nothing measured again
    run_prune(cfg)
    again = json.loads((in_tmp / cfg.paths.prune_report).read_text())
    assert again["latency_allocation"]["table_measured"] == 0
    assert again["latency_allocation"]["keep"] == keep


def test_latency_allocation_params_are_validated():
    from pruning.config import parse_config

    with pytest.raises(Exception, match="set ratio to null"):
        parse_config(merge(TINY, {"prune": {"allocation": "latency", "target_speedup": 2.0}}))
    with pytest.raises(Exception, match="needs allocation: latency"):
        parse_config(merge(TINY, {"prune": {"target_speedup": 2.0}}))
    cfg = parse_config(merge(TINY, {"prune": {"allocation": "latency", "ratio": None, "target_speedup": 2.0}}))
    assert cfg.prune.target_speedup == 2.0
