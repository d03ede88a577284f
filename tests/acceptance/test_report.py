"""The terminal report: laid out whole when piped (CI logs, `| tee`), not wrapped at Rich's 80-column default."""

from pruning.acceptance.metrics import Latency, Metrics, ModelMetrics
from pruning.acceptance.report import PIPED_WIDTH, make_console, print_report

VERDICT = {"passed": False, "checks": [{"name": "max_quantized_accuracy_drop", "metric": "quantized_accuracy_drop",
                                        "op": "<=", "threshold": 0.01, "value": 0.015, "passed": False}]}
LABELS = ["accuracy", "MACs", "params", "size on disk", "latency p50 batch 1", "latency p50 batch 32"]


def _model(accuracy: float, macs: int, size: int) -> ModelMetrics:
    return ModelMetrics(metric=accuracy, accuracy=accuracy, loss=0.1, macs=macs, params=macs // 10, size_bytes=size,
                        structural_sparsity=0)


def _metrics() -> Metrics:
    return Metrics.derive(_model(0.99, 10**9, 40 * 2**20), _model(0.98, 4 * 10**8, 16 * 2**20),
                          _model(0.975, 4 * 10**8, 5 * 2**20), 1e-5, 0.1)


def _latency() -> Latency:
    t = {v: {"latency_ms_b1": ms, "latency_p95_ms_b1": ms, "latency_ms_bN": 8 * ms, "latency_p95_ms_bN": 8 * ms}
         for v, ms in (("dense", 2.0), ("pruned", 1.0), ("quantized", 0.25))}
    return Latency.derive(t, batch_size=32, threads=1)


def test_print_report_keeps_every_row_and_header_on_one_line_when_stdout_is_piped(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    print_report(_metrics(), _latency(), VERDICT)  # no console given: the default one, as flows/pipeline.py calls it
    lines = capsys.readouterr().out.splitlines()
    header = [ln for ln in lines if "dense" in ln and "pruned" in ln and "INT8" in ln]
    assert len(header) == 1 and "pruned vs dense" in header[0] and "INT8 vs dense" in header[0]
    rows = {label: [ln for ln in lines if ln.startswith(f"│ {label} ")] for label in LABELS}
    assert all(len(found) == 1 for found in rows.values()), rows
    assert "40960.0 KiB" in rows["size on disk"][0] and "÷8.00" in rows["size on disk"][0]
    assert "1000.00 M" in rows["MACs"][0] and "×8.00 faster" in rows["latency p50 batch 32"][0]
    (gate,) = [ln for ln in lines if "max_quantized_accuracy_drop" in ln]
    assert "quantized_accuracy_drop" in gate.split("max_quantized_accuracy_drop", 1)[1] and "FAIL" in gate
    body = [ln for ln in lines if ln.startswith("│")]
    assert len(body) == len(LABELS) + 1  # six rows and one gate: nothing continued on a second line


def test_a_piped_console_is_as_wide_as_columns_when_set_else_the_piped_width(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert make_console().width == make_console(stderr=True).width == PIPED_WIDTH == 200
    monkeypatch.setenv("COLUMNS", "80")
    narrow = make_console()
    assert narrow.width == 80
    narrow.print(f"{'x' * 79} two")  # $COLUMNS is obeyed: the line wraps at 80
    assert [ln.rstrip() for ln in capsys.readouterr().out.splitlines()] == ["x" * 79, "two"]


def test_a_gate_failed_on_unreliable_timings_says_why_and_the_summary_warns(capsys, monkeypatch):
    from pruning.acceptance.gates import distrust_latency

    monkeypatch.delenv("COLUMNS", raising=False)
    t = {v: {"latency_ms_b1": 2.0, "latency_p95_ms_b1": 12.0, "latency_ms_bN": 8.0, "latency_p95_ms_bN": 9.0}
         for v in ("dense", "pruned", "quantized")}
    timed = Latency.derive(t, batch_size=32, threads=1, max_spread=3.0)
    verdict = distrust_latency({"passed": True, "checks": [{"name": "speed", "metric": "speedup_b1", "op": ">=",
                                                           "threshold": 1.5, "value": 9.0, "passed": True}]},
                               "unreliable timing")
    print_report(_metrics(), timed, verdict)
    out = capsys.readouterr().out
    assert "UNRELIABLE TIMINGS: p95/p50 up to 6" in out
    (gate,) = [ln for ln in out.splitlines() if "speed" in ln and "speedup_b1" in ln]
    assert "9 (unreliable timing)" in gate and "FAIL" in gate
