from pruning.acceptance.gates import GateConfig, evaluate_gates, metric_value

METRICS = {
    "dense": {"accuracy": 0.99, "latency_ms_b1": 2.0},
    "pruned": {"accuracy": 0.985, "latency_ms_b1": 1.0},
    "quantized": {"accuracy": 0.98, "latency_ms_b1": 0.5},
    "accuracy_drop": 0.005,
    "macs_reduction": 2.4,
}


def test_evaluate_gates_passes_when_every_threshold_holds():
    gates = {"acc": GateConfig(metric="accuracy_drop", op="<=", threshold=0.01),
             "macs": GateConfig(metric="macs_reduction", op=">=", threshold=2.0)}
    verdict = evaluate_gates(METRICS, gates)
    assert verdict["passed"] is True
    assert [c["passed"] for c in verdict["checks"]] == [True, True]
    assert verdict["checks"][1] == {"name": "macs", "metric": "macs_reduction", "op": ">=", "threshold": 2.0,
                                    "value": 2.4, "passed": True}


def test_evaluate_gates_fails_only_the_violated_gate_when_one_threshold_is_missed():
    gates = {"acc": GateConfig(metric="accuracy_drop", op="<=", threshold=0.01),
             "macs": GateConfig(metric="macs_reduction", op=">=", threshold=3.0)}
    verdict = evaluate_gates(METRICS, gates)
    assert verdict["passed"] is False
    assert [c["passed"] for c in verdict["checks"]] == [True, False]


def test_metric_value_is_relative_to_dense_when_asked():
    assert metric_value(METRICS, "quantized.accuracy", "diff") == 0.98 - 0.99
    assert metric_value(METRICS, "quantized.latency_ms_b1", "ratio") == 0.25
    gate = GateConfig(metric="quantized.latency_ms_b1", op="<=", threshold=0.5, relative_to_dense="ratio")
    assert evaluate_gates(METRICS, {"fast": gate})["passed"] is True


def test_evaluate_gates_fails_when_the_metric_is_missing():
    verdict = evaluate_gates({"dense": {}}, {"m": GateConfig(metric="macs_reduction", op=">=", threshold=1.0)})
    assert verdict["passed"] is False
    assert verdict["checks"][0]["value"] is None
