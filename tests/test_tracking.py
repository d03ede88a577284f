"""Registry rules against a real MLflow sqlite store: champion moves only on passing gates AND a better metric."""

import mlflow
import numpy as np
import onnx
import pytest
import torch

from pruning.config import parse_config
from pruning.runtime.export import export_onnx
from pruning.tracking import FP32_MODEL_TAG, INT8_MODEL_TAG, flatten, promote, setup
from pruning.zoo import build_model
from tests.conftest import TINY, merge


@pytest.fixture
def store(tmp_path, monkeypatch, mlflow_store):  # a client made before promote() must see this store
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    export_onnx(build_model("resnet", {"widths": [4, 4, 4]}, (1, 8, 8), 10), (1, 8, 8), tmp_path / "m.onnx", 17)
    return tmp_path


def _pipeline_run(store, accuracy: float, passed: bool, shipped: str | None = None) -> str:
    """A minimal pipeline-shaped run: gates.json, the primary metric and an ONNX model tagged as the INT8 one (or,
    ``shipped`` fp32, as the pruned fp32 one)."""
    setup("pruning")
    with mlflow.start_run() as run:
        mlflow.log_dict({"passed": passed, "checks": [{"name": "accuracy", "metric": "accuracy_drop", "op": "<=",
                                                       "threshold": 0.01, "value": 0.0 if passed else 0.5,
                                                       "passed": passed}]}, "gates.json")
        mlflow.log_metrics({"quantized.accuracy": accuracy, "quantized.metric": accuracy, "shipped.metric": accuracy})
        info = mlflow.onnx.log_model(onnx.load(store / "m.onnx"), name="int8",
                                     input_example=np.zeros((1, 1, 8, 8), np.float32),
                                     onnx_execution_providers=["CPUExecutionProvider"],
                                     pip_requirements=mlflow.onnx.get_default_pip_requirements())  # as the pipeline
        mlflow.set_tag(INT8_MODEL_TAG if shipped != "fp32" else FP32_MODEL_TAG, info.model_uri)
        if shipped:
            mlflow.set_tag("shipped", shipped)
        return run.info.run_id


def test_promote_moves_champion_only_when_gates_pass_and_the_metric_improves(store):
    cfg = parse_config(TINY)
    name = cfg.registry.model_name
    client = mlflow.MlflowClient()

    first = promote(_pipeline_run(store, 0.90, True), cfg)
    assert (first.alias, first.version) == ("champion", "1")

    worse = promote(_pipeline_run(store, 0.80, True), cfg)
    assert worse.alias == "challenger" and "does not beat champion v1" in worse.reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    failing = promote(_pipeline_run(store, 0.99, False), cfg)
    assert failing.alias is None and failing.reason == "gates failed: accuracy"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    tags = client.get_model_version(name, failing.version).tags
    assert tags["gates"] == "failed" and tags["gate.accuracy"].startswith("FAIL")

    better = promote(_pipeline_run(store, 0.95, True), cfg)
    assert better.alias == "champion"
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version == "4"


def test_promote_returns_the_existing_version_when_a_run_is_promoted_twice(store):
    cfg = parse_config(TINY)
    run_id = _pipeline_run(store, 0.9, True)
    first, again = promote(run_id, cfg), promote(run_id, cfg)
    assert first.version == again.version == "1"
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{cfg.registry.model_name}'")) == 1
    assert again.alias == "champion" and again.reason == "already registered (first champion)"  # its real alias


def test_an_unreachable_server_and_a_damaged_store_are_one_line_each(tmp_path, monkeypatch):
    from pruning.errors import PruningError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # nothing listens there
    with pytest.raises(PruningError, match=r"MLflow store http://127\.0\.0\.1:1 failed: .*start the tracking server"):
        setup("pruning", tmp_path)
    (tmp_path / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)  # a store cut short
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(PruningError, match=r"failed: .*move it aside \(mv .*mlflow\.db .*mlflow\.db\.broken\)"):
        setup("pruning", tmp_path)


def test_runs_left_running_by_a_dead_process_are_marked_killed_and_live_ones_kept(store):
    import os
    import subprocess
    import sys

    from pruning.tracking import reap

    experiment_id = setup("pruning")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = mlflow.MlflowClient()
    host = __import__("socket").gethostname()
    orphan = client.create_run(experiment_id, tags={"pruning.host": host, "pruning.pid": dead.stdout.strip()})
    live = client.create_run(experiment_id, tags={"pruning.host": host, "pruning.pid": str(os.getpid())})
    elsewhere = client.create_run(experiment_id, tags={"pruning.host": "another-machine", "pruning.pid": "1"})
    assert reap(experiment_id) == [orphan.info.run_id]
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert {client.get_run(r.info.run_id).info.status for r in (live, elsewhere)} == {"RUNNING"}


def test_promote_minimises_the_metric_when_lower_is_better(store):
    cfg = parse_config(merge(TINY, {"registry": {"primary_metric": "quantized.accuracy", "greater_is_better": False}}))
    assert promote(_pipeline_run(store, 0.9, True), cfg).alias == "champion"
    assert promote(_pipeline_run(store, 0.8, True), cfg).alias == "champion"
    assert promote(_pipeline_run(store, 0.85, True), cfg).alias == "challenger"


def test_a_champion_judged_on_another_primary_metric_is_compared_through_its_run_or_replaced(store):
    """params.yaml's primary metric changed between two versions (as quantized.accuracy -> quantized.metric did)."""
    old_cfg = parse_config(merge(TINY, {"registry": {"primary_metric": "quantized.accuracy"}}))
    assert promote(_pipeline_run(store, 0.90, True), old_cfg).alias == "champion"
    cfg = parse_config(TINY)  # quantized.metric: not a tag of v1, but its run logged it
    worse = promote(_pipeline_run(store, 0.80, True), cfg)
    assert worse.alias == "challenger" and "(0.9)" in worse.reason
    new_cfg = parse_config(merge(TINY, {"registry": {"primary_metric": "quantized.loss"}}))  # v1's run has none
    replaced = promote(_pipeline_run_with(store, {"quantized.loss": 0.3}), new_cfg)
    assert replaced.alias == "champion" and "has no quantized.loss to compare" in replaced.reason


def _pipeline_run_with(store, metrics: dict) -> str:
    run_id = _pipeline_run(store, 0.5, True)
    mlflow.MlflowClient().log_metric(run_id, *next(iter(metrics.items())))
    return run_id


def test_when_int8_does_not_pay_the_registry_gets_the_pruned_fp32_model(store):
    cfg = parse_config(TINY)
    run_id = _pipeline_run(store, 0.9, True, shipped="fp32")
    client = mlflow.MlflowClient()
    tags = client.get_run(run_id).data.tags
    assert INT8_MODEL_TAG not in tags  # only the fp32 model was logged: registering must take it
    result = promote(run_id, cfg)
    version = client.get_model_version(cfg.registry.model_name, result.version)
    assert result.alias == "champion" and version.tags["shipped"] == "fp32"
    assert version.source == tags[FP32_MODEL_TAG]


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_setup_puts_the_default_store_in_the_workspace_root_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ws").mkdir()
    setup("x", tmp_path / "ws")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert (tmp_path / "ws" / "mlflow.db").is_file() and not (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")  # leave no global state pointing here


def test_stage_params_are_the_keys_the_stage_reads():
    from pruning.tracking.pipeline import _stage_params

    params = {"seed": 0, "prune": {"method": "channel", "ratio": 0.3}, "export": {"opset": 17, "exporter": "x"},
              "train": {"lr": 0.1}}
    assert _stage_params(params, ("seed", "prune", "export.opset")) == {
        "seed": "0", "prune.method": "channel", "prune.ratio": "0.3", "export.opset": "17"}


def test_an_equal_metric_does_not_beat_the_champion_through_a_rounded_tag(store):
    """The champion's value is read back from its version tag: a rounded tag (0.333333) let an equal run (1/3) win."""
    cfg = parse_config(TINY)
    assert promote(_pipeline_run(store, 1 / 3, True), cfg).alias == "champion"
    assert promote(_pipeline_run(store, 1 / 3, True), cfg).alias == "challenger"
