"""Registry rules against a real MLflow sqlite store: champion moves only on passing gates AND a better metric."""

import os
from pathlib import Path

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


def test_the_run_command_s_warm_up_opens_the_workspace_s_store_from_another_directory(tmp_path, monkeypatch,
                                                                                     mlflow_template):
    """`python -m pruning run --params examples/x/params.yaml` from the repository root: the store opened while
    Prefect starts is the example's; mlflow exports its URI as MLFLOW_TRACKING_URI, which the evaluate stage reads
    (it once logged into the working directory's store)."""
    from flows.pipeline import _warm_up_tracking
    from tests.conftest import fresh_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test, whatever mlflow sets
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    fresh_store(mlflow_template, tmp_path / "ws")
    _warm_up_tracking("x", tmp_path / "ws")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert not (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")  # leave no global state pointing here


def test_stage_params_are_the_keys_the_stage_reads_without_the_unset_ones():
    from pruning.tracking.pipeline import _params

    params = {"seed": 0, "prune": {"method": "channel", "ratio": 0.3, "round_to": None},
              "export": {"opset": 17, "exporter": "x"}, "train": {"lr": 0.1}}
    assert _params(params, ("seed", "prune", "export.opset")) == {
        "seed": "0", "prune.method": "channel", "prune.ratio": "0.3", "export.opset": "17"}


def test_a_report_number_that_repeats_a_setting_is_no_metric_but_one_the_stage_computed_is():
    from pruning.tracking.pipeline import _curves_and_summary

    report = {"ratio": 0.5, "opset": 17, "parity_score": 0.02, "steps": [{"step": 0, "ratio": 0.25}]}
    curves, summary = _curves_and_summary([report], {"ratio": 0.5, "opset": 17})
    assert summary == {"parity_score": 0.02} and len(curves) == 1
    _, searched = _curves_and_summary([report], {"ratio": None, "opset": 17})  # prune.ratio unset: it searched
    assert searched == {"final_ratio": 0.5, "parity_score": 0.02}


def test_the_parent_run_s_params_are_params_yaml_s_settings_with_one_param_per_gate():
    """The shipped params.yaml logged 106 params: 24 of them gates.* (four per gate, `relative_to_dense: None` among
    them), more unset defaults as "None". 82 after issue 27 added the optimizers, feature distillation and the timed
    sequence length; 86 now with prune.kv_groups, latency_layers and step_optimizer (every one a setting the run
    used)."""
    import yaml

    from pruning.config import load_config
    from pruning.stages import STAGES
    from pruning.tracking.pipeline import _used_params
    from tests.conftest import REPO

    written = yaml.safe_load((REPO / "params.yaml").read_text())
    logged = _used_params(load_config(REPO / "params.yaml").model_dump(mode="json"), STAGES)
    gates = {k for k in logged if k.startswith("gates.")}
    assert gates == {f"gates.{name}" for name in written["gates"]}
    assert logged["gates.macs"] == "macs_reduction >= 2"
    assert set(logged) - gates <= set(flatten(written))  # nothing params.yaml does not say
    assert "None" not in logged.values() and len(logged) <= 86


def test_an_equal_metric_does_not_beat_the_champion_through_a_rounded_tag(store):
    """The champion's value is read back from its version tag: a rounded tag (0.333333) let an equal run (1/3) win."""
    cfg = parse_config(TINY)
    assert promote(_pipeline_run(store, 1 / 3, True), cfg).alias == "champion"
    assert promote(_pipeline_run(store, 1 / 3, True), cfg).alias == "challenger"


@pytest.mark.parametrize("shipped", ["quantized", "pruned"])
def test_tradeoff_shows_the_pruned_and_the_int8_point_where_they_coincide(shipped):
    """Same MACs and (here) the same accuracy: each point still changes pixels where it is drawn (before, the INT8
    circle covered the pruned one in the MACs panel)."""
    from pruning.tracking.figures import tradeoff

    variant = {"macs": 5e4, "metric": 0.93, "latency_ms_b1": 0.03, "latency_ms_bN": 0.1}
    metrics = {"dense": {**variant, "macs": 2e5, "metric": 0.98}, "pruned": variant, "quantized": dict(variant)}
    fig = tradeoff(metrics, 16, shipped)
    ax = fig.axes[0]
    fig.canvas.draw()
    x, y = ax.transData.transform((variant["macs"] * 1e-6, variant["metric"]))
    height = fig.canvas.get_width_height()[1]
    window = (slice(int(height - y) - 12, int(height - y) + 12), slice(int(x) - 12, int(x) + 12))
    full = np.asarray(fig.canvas.buffer_rgba())[window].copy()
    for line in [ln for ln in ax.get_lines() if ln.get_label().startswith(("pruned fp32", "pruned INT8"))]:
        line.set_visible(False)  # what the image loses without this point: nothing if another covers it
        fig.canvas.draw()
        assert (np.asarray(fig.canvas.buffer_rgba())[window] != full).any(axis=-1).sum() > 10, line.get_label()
        line.set_visible(True)


def test_promote_registers_a_model_whose_name_holds_quotes(store):
    """MLflow takes quotes in a name; a filter string quoting it (name='a'b') made promote fail at the end of a run."""
    cfg = parse_config(merge(TINY, {"registry": {"model_name": "team's \"best\" model"}}))
    run_id = _pipeline_run(store, 0.9, True)
    first = promote(run_id, cfg)
    assert (first.model_name, first.version, first.alias) == ("team's \"best\" model", "1", "champion")
    assert promote(run_id, cfg).reason == "already registered (first champion)"
    assert promote(_pipeline_run(store, 0.8, True), cfg).alias == "challenger"


def test_the_move_the_store_aside_hint_only_where_the_store_is_damaged(tmp_path):
    """A request the store refused (a bad value) leaves a healthy store where it is; a file that is no database
    gets the hint (test_an_unreachable_server_and_a_damaged_store_are_one_line_each)."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    from pruning.errors import PruningError
    from pruning.tracking.store import store_errors

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(PruningError) as exc, store_errors(uri):
        raise MlflowException.invalid_parameter_value("Invalid model name 'a/b'. Names cannot contain '/' or ':'.")
    assert str(exc.value) == (f"MLflow store {uri} failed: MlflowException: Invalid model name 'a/b'. Names cannot "
                              "contain '/' or ':'.")
    with pytest.raises(PruningError, match=r"database is locked$"), store_errors(uri):
        raise sqlite3.OperationalError("database is locked")  # busy, not damaged
    with pytest.raises(PruningError, match=r"wrapped \(the file is damaged: move it aside \(mv "), store_errors(uri):
        try:
            raise sqlite3.DatabaseError("database disk image is malformed")
        except sqlite3.DatabaseError as cause:
            raise RuntimeError("wrapped") from cause


def test_a_store_that_cannot_be_written_while_it_is_created_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A real write failure half-way through creating the tables (the file size limit, RLIMIT_FSIZE: a full disk
    without root): one line naming the store and sqlite's reason, no temporary store left, no store."""
    import resource
    import signal

    from pruning.errors import PruningError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the new store grows past 64 KiB while migrating
    try:
        with pytest.raises(PruningError) as exc:
            setup("pruning", tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert str(exc.value) == f"cannot create the MLflow store {tmp_path / 'mlflow.db'}: disk I/O error"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.create.lock"]  # the lock's (empty) file only


@pytest.mark.parametrize("error", ["sqlite", "os"])
def test_a_full_disk_while_the_store_is_created_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, error):
    """ENOSPC as sqlite reports it (SQLITE_FULL, through SQLAlchemy) and as the OS does, after the temporary store
    was started: "no space left on device", and the temporary file gone."""
    import errno
    import sqlite3

    import sqlalchemy.exc
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from pruning.errors import PruningError

    def full(self, uri, artifacts):
        Path(uri.removeprefix("sqlite:///")).write_bytes(b"SQLite format 3\x00")  # what was written before
        if error == "os":
            raise OSError(errno.ENOSPC, "No space left on device")
        full_ = sqlite3.OperationalError("database or disk is full")
        raise sqlalchemy.exc.OperationalError("CREATE TABLE runs (...)", {}, full_) from full_

    monkeypatch.setattr(SqlAlchemyStore, "__init__", full)  # MLflow's side: our creation around it is under test
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(PruningError) as exc:
        setup("pruning", tmp_path)
    assert str(exc.value) == f"cannot create the MLflow store {tmp_path / 'mlflow.db'}: no space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.create.lock"]
