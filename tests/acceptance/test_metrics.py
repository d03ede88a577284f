"""The metrics schema: derived figures, the files' field order, the names gates may use, the terminal report."""

import json
import math

import pytest
from rich.console import Console

from pruning.acceptance.metrics import KNOWN_METRICS, Latency, Metrics, ModelMetrics, choose_shipped, dump, merged
from pruning.acceptance.report import print_report, summary_markdown


def _model(acc: float, macs: int, size: int, **extra) -> ModelMetrics:
    return ModelMetrics(metric=acc, accuracy=acc, loss=0.1, macs=macs, params=macs // 10, size_bytes=size, structural_sparsity=0,
                        **extra)


def _latency() -> Latency:
    t = {v: {"latency_ms_b1": ms, "latency_p95_ms_b1": ms, "latency_ms_bN": 8 * ms, "latency_p95_ms_bN": 8 * ms}
         for v, ms in (("dense", 2.0), ("pruned", 1.0), ("quantized", 0.25))}
    return Latency.derive(t, batch_size=32, threads=1)


def test_derive_computes_reductions_and_drops_from_the_three_models():
    m = Metrics.derive(_model(0.99, 1000, 4000), _model(0.98, 400, 1600), _model(0.975, 400, 500), 1e-5, 0.1)
    assert m.macs_reduction == 2.5 and m.size_reduction == 8.0
    assert math.isclose(m.accuracy_drop, 0.01) and math.isclose(m.quantized_accuracy_drop, 0.015)
    t = _latency()
    assert (t.speedup_b1, t.int8_vs_dense_speedup_bN, t.int8_vs_pruned_speedup_b1) == (2.0, 8.0, 4.0)


def test_dump_keeps_the_schema_order_and_leaves_out_what_does_not_apply():
    m = Metrics.derive(_model(0.99, 1000, 4000), _model(0.98, 1000, 4000, weight_sparsity=0.9, csr_bytes=900,
                                                        dense_bytes=4000), _model(0.98, 1000, 1000), 0.0, 0.0)
    doc = dump(m)
    assert list(doc) == ["dense", "pruned", "quantized", "macs_reduction", "params_reduction", "size_reduction",
                         "metric_name", "greater_is_better", "metric_drop", "quantized_metric_drop", "parity_max_abs",
                         "parity_score", "accuracy_drop", "quantized_accuracy_drop"]
    assert list(doc["dense"]) == ["metric", "accuracy", "loss", "macs", "params", "size_bytes", "structural_sparsity"]
    assert doc["pruned"]["csr_bytes"] == 900 and "weight_sparsity" not in doc["quantized"]
    assert Metrics.model_validate(json.loads(json.dumps(doc))) == m  # the file reads back into the same record


def test_known_metrics_cover_both_files_but_not_the_measurement_settings():
    assert {"accuracy_drop", "int8_vs_pruned_speedup_b1", "quantized.accuracy", "pruned.latency_ms_bN",
            "pruned.weight_sparsity"} <= KNOWN_METRICS
    assert not {"threads", "batch_size_N", "dense"} & KNOWN_METRICS
    both = merged(Metrics.derive(_model(0.99, 1000, 4000), _model(0.98, 400, 1600), _model(0.98, 400, 500), 0.0, 0.1),
                  _latency())
    assert both["pruned"]["macs"] == 400 and both["pruned"]["latency_ms_b1"] == 1.0 and both["speedup_bN"] == 2.0


def test_the_report_says_honestly_what_a_masked_model_s_zeros_buy():
    sparse = _model(0.98, 1000, 4000, weight_sparsity=0.9, csr_bytes=900 * 1024, dense_bytes=4000 * 1024)
    m = Metrics.derive(_model(0.99, 1000, 4000), sparse, _model(0.98, 1000, 1000), 0.0, 0.1)
    console = Console(record=True, width=200)
    print_report(m, _latency(), {"passed": True, "checks": []}, console)
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "90.0% of the pruned model's Conv/Linear weights are zero" in text and "900.0 KiB against 4000.0 KiB" in text
    assert "multiply the zeros" in summary_markdown(m, _latency(), {"passed": True, "checks": []}, None, {})
    dense_only = Metrics.derive(_model(0.99, 1000, 4000), _model(0.98, 400, 1600), _model(0.98, 400, 500), 0.0, 0.1)
    console = Console(record=True, width=200)
    print_report(dense_only, _latency(), {"passed": True, "checks": []}, console)
    assert "zero" not in console.export_text()


def test_a_metric_where_lower_is_better_drops_when_it_grows_and_has_no_accuracy_fields():
    def model(mse: float) -> ModelMetrics:
        return ModelMetrics(metric=mse, loss=mse, macs=1000, params=100, size_bytes=4000, structural_sparsity=0)

    m = Metrics.derive(model(0.10), model(0.12), model(0.15), 0.0, 0.1, metric_name="mse", greater_is_better=False)
    assert math.isclose(m.metric_drop, 0.02) and math.isclose(m.quantized_metric_drop, 0.05)  # worse: positive
    doc = dump(m)
    assert "accuracy_drop" not in doc and "accuracy" not in doc["dense"] and doc["metric_name"] == "mse"
    md = summary_markdown(m, _latency(), {"passed": True, "checks": []}, None, {})
    assert "| mse | 0.1 | 0.12 | 0.15 |" in md and "mse drop 0.02" in md


def _timings(pruned_b1: float, quantized_b1: float) -> dict:
    return {v: {"latency_ms_b1": ms, "latency_p95_ms_b1": ms, "latency_ms_bN": 8 * ms, "latency_p95_ms_bN": 8 * ms}
            for v, ms in (("dense", 2.0), ("pruned", pruned_b1), ("quantized", quantized_b1))}


def test_int8_ships_only_where_it_pays_else_the_pruned_fp32_model_and_the_gates_see_the_shipped_one():
    m = Metrics.derive(_model(0.99, 1000, 4000), _model(0.98, 400, 1600), _model(0.975, 400, 500), 0.0, 0.1)
    pays = choose_shipped(m, _timings(1.0, 0.4), "auto", 1.1, 0.01)
    assert pays[0] == "quantized" and pays[2] == pytest.approx(0.015) and "INT8 pays: INT8 2.50x" in pays[1]
    slower = choose_shipped(m, _timings(1.0, 1.2), "auto", 1.1, 0.01)
    assert slower[0] == "pruned" and slower[2] == pytest.approx(0.01)
    assert "INT8 does not pay (0.83x < 1.1x)" in slower[1] and "the pruned fp32 model ships" in slower[1]
    worse = choose_shipped(m, _timings(1.0, 0.4), "auto", 1.1, 0.001)
    assert worse[0] == "pruned" and "loses 0.005 > 0.001" in worse[1]
    assert choose_shipped(m, _timings(1.0, 1.2), "int8", 1.1, 0.01)[0] == "quantized"  # forced
    lat = Latency.derive(_timings(1.0, 1.2), 32, 1, slower)
    both = merged(m, lat)
    assert both["shipped"]["latency_ms_b1"] == 1.0 and both["shipped_speedup_b1"] == 2.0
    assert both["shipped_metric_drop"] == pytest.approx(0.01) and "shipped.metric" in KNOWN_METRICS
    assert "Ships: pruned fp32 — INT8 does not pay" in summary_markdown(m, lat, {"passed": True, "checks": []},
                                                                        None, {})
