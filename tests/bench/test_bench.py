import json

import pytest

from bench.config import BENCH_PARAMS, bench_config, load_bench
from bench.criteria import _ci95, run_criteria
from pruning.config import parse_config
from pruning.errors import ConfigError
from tests.conftest import REPO, TINY, merge, write_params

TINY_ARCH = "tests.bench.tiny:tiny_mobile"  # the machinery on a net of seconds; the figures come from the real ones
BENCH = {"samples": 300, "base_epochs": 1, "seeds": 1, "quick_targets": [2.0], "short_epochs": 2,
         "calibration_samples": 64, "batch_size": 64,
         "kwargs": {"widths": [8, 16], "blocks": [1, 1]},
         "methods": {"plain_tp": {"criterion": "l2", "bn_recalibration": False}, "taylor": {"criterion": "taylor"}}}


def test_ci95_matches_student_t():
    mean, half = _ci95([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert half == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-5)  # t(0.975, 2) * s / sqrt(n)
    assert _ci95([0.5]) == (0.5, 0.0)


def test_run_criteria_quick_compares_methods_at_equal_macs_and_writes_its_report(tmp_path, mlflow_store):
    import mlflow

    cfg = parse_config(merge(TINY, {"paths": {"bench_dir": "reports/bench-test"},
                                    "tracking": {"enabled": True, "experiment": "c"}}))
    result = run_criteria(cfg, bench_config(BENCH), quick=True, out_dir=tmp_path / "bench")

    records = result["records"]
    assert {(r["method"], r["regime"]) for r in records} == {(m, g) for m in ("plain_tp", "taylor")
                                                             for g in ("recal", "ft", "gradual")}
    for r in records:
        assert r["achieved"] >= 2.0  # every method reaches the same MACs target
    same_ratio = {r["ratio"] for r in records if r["regime"] == "ft"}
    assert len(same_ratio) == 1  # uniform scope: one searched ratio shared by all criteria
    corr = result["summary"]["oracle_correlation"]
    assert corr["loss_change"]["spearman"] == pytest.approx(1.0) and -1 <= corr["l2"]["spearman"] <= 1
    saved = json.loads((tmp_path / "bench" / "criteria.json").read_text())
    assert len(saved["records"]) == len(records) == 6
    assert (tmp_path / "bench" / "criteria.png").stat().st_size > 5000
    text = (tmp_path / "bench" / "criteria.md").read_text()  # the one home of the tables (the docs include it)
    assert "| plain_tp |" in text and text.endswith("![accuracy vs achieved MACs](criteria.png)\n")
    runs = mlflow.search_runs(experiment_names=["c-bench"], output_format="list")  # a parent + one run per pruning
    assert len(runs) == 1 + len(records)
    assert {r.data.params.get("method") for r in runs} >= {"plain_tp", "taylor"}


def test_run_sparse_reports_csr_size_latency_and_the_lottery_gap(tmp_path, mlflow_store):
    from bench.sparse import run_sparse

    bench = {**BENCH, "unstructured_sparsity": 0.9, "lottery_rounds": 2, "lottery_epochs": 2, "lottery_rewind_epoch": 1}
    cfg = parse_config(merge(TINY, {"evaluate": {"batch_size": 16, "repeats": 3, "rounds": 1, "warmup": 1},
                                    "tracking": {"enabled": True, "experiment": "t"}}))
    import mlflow

    result = run_sparse(cfg, bench_config(bench), tmp_path / "bench")
    un, lt = result["unstructured"], result["lottery"]
    assert un["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert un["csr_bytes"] < un["dense_bytes"] and un["csr_vs_dense"] == pytest.approx(un["csr_bytes"] / un["dense_bytes"])
    assert un["latency_ms_bN_dense"] > 0 and un["latency_ms_bN_unstructured"] > 0
    assert [r["round"] for r in lt["rounds"]] == [1, 2]
    assert lt["final_sparsity"] == pytest.approx(1 - 0.8**2, abs=0.01)
    assert lt["gap_pt"] == pytest.approx(100 * (lt["dense_accuracy"] - lt["final_accuracy"]))
    assert "Lottery ticket" in (tmp_path / "bench" / "sparse.md").read_text()
    assert (tmp_path / "bench" / "sparse.json").is_file()
    run = mlflow.search_runs(experiment_names=["t-bench"], output_format="list")[0]  # tracked like every run
    assert run.data.metrics["unstructured.csr_bytes"] == un["csr_bytes"]
    assert run.data.metrics["lottery.final_accuracy"] == pytest.approx(lt["final_accuracy"])


def test_run_latency_reports_speedup_and_efficiency_for_every_variant(tmp_path, monkeypatch):
    import bench.latency as bl

    monkeypatch.chdir(tmp_path)  # paths.latency_table is relative
    b = bench_config({"latency_repeats": 3, "latency_rounds": 1, "latency_warmup": 1})
    report = bl.run_latency(parse_config(TINY), b, [TINY_ARCH], [1, 4], 2.0, [None, 8], tmp_path, step=8,
                            shape=(3, 32, 32))
    rows = report["archs"][TINY_ARCH]
    assert set(rows) == {"dense", "dense, ORT basic optimisation", "dense + INT8",
                         "pruned, MACs allocation, round_to None", "pruned, MACs allocation, round_to 8",
                         "pruned, latency allocation, 2x MACs", "pruned, latency allocation, 2x speedup target",
                         "pruned, latency allocation, 2x speedup target + INT8",
                         "pruned, latency allocation, 2x speedup target, shipped"}
    for name, r in rows.items():
        assert r["efficiency_b4"] == pytest.approx(r["speedup_b4"] / r["macs_reduction"])
        if "MACs" in name:
            assert r["macs_reduction"] >= 2.0
    assert rows["dense"]["speedup_b1"] == pytest.approx(1.0)
    assert rows["dense, ORT basic optimisation"]["macs"] == rows["dense"]["macs"]
    speed = rows["pruned, latency allocation, 2x speedup target"]["allocation"]
    assert speed["rounds"] and "reached" in speed  # measured rounds of the search are reported
    assert all({"speedup", "low", "high"} <= set(r) for r in speed["rounds"])  # each with its interval
    # what ships is never slower than pruned fp32: INT8 only where it pays, with its per-operator selection
    shipped = rows["pruned, latency allocation, 2x speedup target, shipped"]
    fp32 = rows["pruned, latency allocation, 2x speedup target"]
    int8 = rows["pruned, latency allocation, 2x speedup target + INT8"]
    assert shipped["p50_ms_b1"] == (int8 if shipped["shipped"] == "int8" else fp32)["p50_ms_b1"]
    # decided on INT8 timed alternately with pruned fp32 alone, as evaluate decides (the lineup's ratio kept beside it)
    over = int8["paired_vs_fp32_b1"]
    assert over["against"] == "pruned, latency allocation, 2x speedup target" and over["low"] <= over["speedup"]
    assert shipped["shipped"] == ("int8" if over["speedup"] >= 1.1 else "fp32")
    assert fp32["summary"]["int8_over_pruned_fp32_b1"] == over["speedup"]
    assert fp32["summary"]["lineup_int8_over_pruned_fp32_b1"] == pytest.approx(fp32["p50_ms_b1"] / int8["p50_ms_b1"])
    assert int8["int8_selection"]["chosen"] and fp32["summary"]["shipped"] == shipped["shipped"]
    # the target check reads the speedup timed in alternation with dense alone, as the search accepted it
    paired, summary = fp32["paired_b1"], fp32["summary"]
    assert paired["low"] <= paired["speedup"] <= paired["high"] and paired["rounds"] >= 1 and paired["against"] == "dense"
    assert summary["speedup_b1"] == paired["speedup"] and summary["interval_b1"] == [paired["low"], paired["high"]]
    assert summary["efficiency_b1"] == pytest.approx(paired["speedup"] / fp32["macs_reduction"])
    assert summary["lineup_speedup_b1"] == fp32["speedup_b1"]
    # the equal-MACs check: the latency allocation timed alternately with the lineup's fastest MACs allocation
    versus = rows["pruned, latency allocation, 2x MACs"]["paired_vs_macs_b1"]
    fastest = min(("pruned, MACs allocation, round_to None", "pruned, MACs allocation, round_to 8"),
                  key=lambda n: rows[n]["p50_ms_b1"])
    assert versus["against"] == fastest and versus["low"] <= versus["speedup"] <= versus["high"]
    assert summary["latency_vs_best_macs_allocation_b1"] == versus["speedup"]
    assert summary["latency_vs_macs_interval_b1"] == [versus["low"], versus["high"]]
    assert summary["lineup_latency_vs_best_macs_allocation_b1"] == pytest.approx(
        rows["pruned, latency allocation, 2x MACs"]["speedup_b1"] / rows[fastest]["speedup_b1"])
    assert "paired (lineup" in (tmp_path / "latency.md").read_text()
    assert (tmp_path / "models/latency_table.json").is_file()  # the table is kept for the next run
    assert "| dense |" in (tmp_path / "latency.md").read_text()


def test_bench_config_names_the_key_of_a_bad_bench_value_and_its_file():
    with pytest.raises(ConfigError, match='Invalid "seeds" in bench/params.yaml: 0'):
        bench_config({"seeds": 0})
    with pytest.raises(ConfigError, match='Unknown key "methods.l2.scoep" in bench/params.yaml'):
        bench_config({"methods": {"l2": {"criterion": "l2", "scoep": "global"}}})
    with pytest.raises(ConfigError, match="bench/params.yaml must hold a mapping of settings, got list"):
        bench_config([1])


def test_the_shipped_bench_params_validate_and_params_yaml_points_an_old_bench_section_there():
    shipped = load_bench(REPO / BENCH_PARAMS)
    assert shipped.seeds == 5 and shipped.targets == [2, 4, 8, 16] and shipped.methods["l2_kd"].distill is True
    with pytest.raises(ConfigError, match='The "bench" section of params.yaml moved to bench/params.yaml'):
        parse_config(merge(TINY, {"bench": {"seeds": 5}}))


def test_bench_robust_runs_fresh_after_an_interrupted_loaded_run_and_under_load(tmp_path, monkeypatch):
    """The three scenarios really run (a real neighbour process, a real Ctrl-C that leaves a table, re-measured
    alone); the figures that matter come from `python -m bench.robust` at ImageNet shape, not from a tiny net."""
    from bench.robust import run_robust

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the children: python -m bench.robust, here
    write_params(tmp_path)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/params.yaml").write_text("{}\n")
    report = run_robust(parse_config(TINY), [TINY_ARCH], 1.3, tmp_path / "out", step=8, interrupt=0.1,
                        shape=(3, 32, 32), classes=10)
    rows = report["archs"][TINY_ARCH]
    assert set(rows) == {"fresh", "after an interrupted run under load", "under load (re-measured alone)"}
    assert rows["after an interrupted run under load"]["interrupted_table_entries"] > 0  # the Ctrl-C saved its table
    assert rows["after an interrupted run under load"]["table_reused"] > 0  # ... and the next run read it
    for r in rows.values():
        assert r["candidates"] >= 1 and r["alone"]["rounds"] == 9 and r["alone"]["low"] <= r["alone"]["speedup"]
        assert r["macs_reduction"] > 1.0
    assert (tmp_path / "out/robust.json").is_file() and f"| {TINY_ARCH} | fresh |" in report["markdown"]


def test_run_transformers_prunes_every_variant_to_its_target_and_reports_speedups(tmp_path, monkeypatch):
    """The machinery on the text example at a tiny size (one epoch, 48 texts of 12 tokens); the figures come from
    the full run (docs/results/transformers.md)."""
    import bench.transformers as bt
    from pruning.runtime.timing import Protocol

    def small(name: str, workdir):
        cfg, _ = real(name, tmp_path / "ignored")
        data_kwargs = {**cfg.data.kwargs, "train": 48, "test": 24, "length": 12}
        cfg = cfg.model_copy(update={
            "data": cfg.data.model_copy(update={"kwargs": data_kwargs}),
            "train": cfg.train.model_copy(update={"epochs": 1}),
            "finetune": cfg.finetune.model_copy(update={"epochs": 1}),
            "evaluate": cfg.evaluate.model_copy(update={"sequence_length": 12})})
        from pruning.stages import prepare
        from pruning.stages.common import prepared_data

        prepare.run(cfg, workdir)
        return cfg, prepared_data(cfg, workdir)

    real = bt.example
    (tmp_path / "ignored").mkdir()
    monkeypatch.setattr(bt, "example", small)
    monkeypatch.setattr(bt, "PROTOCOL", Protocol(warmup=1, repeats=3, rounds=3))
    monkeypatch.setattr("pruning.allocation.transformer.SEARCH_PROTOCOL", Protocol(warmup=1, repeats=3, rounds=3))
    monkeypatch.setattr(bt, "BISECTION", 6)  # plain_tp's ratio to within 0.015: enough to reach 2x
    monkeypatch.delitem(__import__("sys").modules, "topics", raising=False)
    # latency_layers is latency with one more knob, tested on its own (tests/allocation/test_transformer.py);
    # heads_mlp_keep_hidden is heads_mlp with prune.hidden: false (tests/test_transformers.py)
    variants = tuple(v for v in bt.VARIANTS if v not in ("latency_layers", "heads_mlp_keep_hidden"))
    result = bt.run_bench(parse_config(TINY), 1, ["text-topics"], tmp_path, variants=variants)
    rows = {r["variant"]: r for r in result["summary"]}
    assert set(rows) == set(variants)
    for name in ("heads_mlp", "heads_mlp_hidden", "mlp_only", "latency", "plain_tp"):
        assert rows[name]["macs_reduction"] >= 2.0 and not rows[name]["notes"]
    # a measured 2x: reached (the search accepted a candidate) or said to be out of reach, never silently missed
    speedup = rows["latency_speedup"]
    assert speedup["macs_reduction"] > 1.0 and (not speedup["notes"] or "out of reach" in speedup["notes"][0])
    assert rows["layers"]["macs_reduction"] > 1.8  # one of two layers: embeddings and classifier stay
    assert rows["heads_only"]["notes"] == ["2x out of reach: ratio 0.75"] and rows["heads_only"]["macs_reduction"] < 2
    for r in rows.values():
        assert r["speedup_b1"] > 0 and r["efficiency"] == pytest.approx(r["speedup_b1"] / r["macs_reduction"])
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["int8_accuracy"] <= 1
    assert "| heads_mlp |" in (tmp_path / "transformers.md").read_text()
    # another run of one example keeps the other's records
    kept = {**result["records"][0], "example": "vit-digits"}
    (tmp_path / "transformers.json").write_text(json.dumps({"records": [kept] + result["records"]}))
    assert bt._kept(tmp_path, ["text-topics"], list(variants), 1) == [kept]
    # and a run of one variant keeps the others'
    assert len(bt._kept(tmp_path, ["text-topics"], ["layers"], 1)) == len(result["records"])


def test_complexity_structure_retrains_a_structure_from_new_weights_with_its_shapes_kept():
    """bench complexity_structure's question — the structure or its training? — rests on this: the same shapes,
    every weight and BatchNorm statistic initialised anew, the original untouched."""
    import torch

    from bench.complexity_structure import _from_scratch
    from pruning.zoo import build_model

    torch.manual_seed(0)
    net = build_model("resnet1d", {"widths": [8, 16], "blocks": [1, 1]}, (1, 40), 10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.fill_(3.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fresh = _from_scratch(net, seed=1)
    after = fresh.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    weights = [k for k in before if k.endswith("weight")]
    assert weights and all(not torch.equal(after[k], before[k]) for k in weights)
    assert all(float(v.abs().max()) == 0 for k, v in after.items() if k.endswith("running_mean"))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
