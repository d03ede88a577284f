"""The metrics schema: derived figures, the files' field order, the names gates may use, the terminal report."""

import json
import math

from rich.console import Console

from pruning.acceptance.metrics import KNOWN_METRICS, Latency, Metrics, ModelMetrics, dump, merged
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
    assert (t.speedup_b1, t.quantized_speedup_bN, t.int8_speedup_b1) == (2.0, 8.0, 4.0)


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
    assert {"accuracy_drop", "int8_speedup_b1", "quantized.accuracy", "pruned.latency_ms_bN",
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
