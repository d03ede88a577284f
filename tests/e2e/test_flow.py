"""The Prefect flow end to end, against a temporary sqlite MLflow store, in a real git + DVC repository: parent and
nested runs, registry promotion, a failing gate that leaves champion alone (under prefect_test_harness); `python -m
pruning run` with its own ephemeral server; one-line failures; a kill that takes the children down."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from pruning.runtime.session import predict, session
from pruning.stages import STAGES as TABLE
from tests.conftest import REPO, write_params
from tests.e2e.conftest import PREFECT, prefect_home
from tests.golden import git

STAGES = {s.name for s in TABLE}


@PREFECT
def test_pipeline_flow_tracks_every_stage_and_promotes_only_on_passing_gates(harness, repo, golden):
    from flows.pipeline import GatesFailed, pipeline
    from tests.e2e.test_flow_states import latest

    first = pipeline(repo=str(repo))  # the flow works in the repository it is given, wherever it runs from
    assert set(first["ran"]) == STAGES and all(first["ran"].values())
    assert first["gates"]["passed"] is True
    # every stage recomputed, in another process, from the golden run's data and params: metrics.json holds everything
    # deterministic and comes back byte for byte (the measured latencies live in latency.json, measured every run)
    assert (repo / "reports/metrics.json").read_text() == (golden / "reports/metrics.json").read_text()
    assert "latency_ms_b1" in json.loads((repo / "reports/latency.json").read_text())["quantized"]
    run, summary = latest()  # the run list shows the verdict; the summary says where the MLflow run is
    assert "gates:passed" in run.tags and f"Parent run `{first['run_id']}` in experiment `flow-test`" in summary
    assert f"`mlflow ui --backend-store-uri sqlite:///{repo}/mlflow.db`, then <http://127.0.0.1:5000/#/" in summary
    name = "tiny-int8"
    assert first["promotion"]["alias"] == "champion"

    client = mlflow.MlflowClient()
    parent = client.get_run(first["run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{first['run_id']}'")
    assert {c.data.tags["stage"] for c in children} == STAGES and len(children) >= 7
    # final metrics under the names of reports/metrics.json, same values
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert parent.data.metrics["macs_reduction"] == pytest.approx(metrics["macs_reduction"])
    assert parent.data.metrics["quantized.accuracy"] == pytest.approx(metrics["quantized"]["accuracy"])
    assert parent.data.params["prune.ratio"] == "0.5"
    assert {"git_commit", "params_hash", "data_md5_train", "gates"} <= parent.data.tags.keys()
    artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"gates.json", "metrics.json", "prune_layers.csv", "tradeoff.png", "prune_steps.png"} <= artifacts
    by_stage = {c.data.tags["stage"]: c.info.run_id for c in children}
    assert len(client.get_metric_history(by_stage["train"], "test_accuracy")) == 4  # one point per epoch
    assert [m.step for m in client.get_metric_history(by_stage["prune"], "macs")] == [0, 1, 2]

    # the champion loads back from the registry and gives the outputs of the model that shipped: INT8 where it paid,
    # else the pruned fp32 one (on a net this tiny INT8's quantize/dequantize overhead can outweigh what it saves)
    shipped = json.loads((repo / "reports/latency.json").read_text())["shipped"]
    shipped_file = repo / ("models/pruned.int8.onnx" if shipped == "quantized" else "models/pruned.onnx")
    assert client.get_model_version_by_alias(name, "champion").tags["shipped"] == \
        ("int8" if shipped == "quantized" else "fp32")
    champion = mlflow.onnx.load_model(f"models:/{name}@champion")
    x = np.load(repo / "data/test.npz")["x"][:8]
    import onnxruntime as ort

    sess = ort.InferenceSession(champion.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], predict(session(shipped_file), x), rtol=0, atol=0)

    # an unchanged rerun recomputes nothing
    again = pipeline(repo=str(repo))
    assert [s for s, did in again["ran"].items() if did] == ["prepare"]  # always: it fingerprints the data

    # an impossible gate: evaluate reruns, a new version is registered with failing-gate tags, champion stays put
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gates"]["impossible"] = {"metric": "macs_reduction", "op": ">=", "threshold": 1000.0}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    failing = pipeline(repo=str(repo))
    assert [s for s, did in failing["ran"].items() if did] == ["prepare", "evaluate"]
    assert failing["gates"]["passed"] is False and failing["promotion"]["alias"] is None
    version = client.get_model_version(name, failing["promotion"]["version"])
    assert version.tags["gates"] == "failed" and version.tags["gate.impossible"].startswith("FAIL")
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["promotion"]["version"]
    run, _ = latest()
    assert run.state.is_completed() and "gates:failed" in run.tags and "gates:passed" not in run.tags
    with pytest.raises(GatesFailed, match="gates failed: impossible") as strict:  # --strict: the flow run fails
        pipeline(repo=str(repo), strict=True)
    run, _ = latest()
    assert run.state.is_failed() and "gates:failed" in run.tags and strict.value.result["promotion"]["alias"] is None


@PREFECT
def test_serve_builds_the_pipeline_s_deployment_and_the_search_s_on_the_crons_of_params_yaml(harness, tmp_path):
    from flows.deploy import build_deployments
    from pruning.config import load_config

    write_params(tmp_path, {"schedule": {"cron": "15 4 * * 1", "timezone": "Europe/Paris"}})
    (deployment,) = build_deployments(load_config(tmp_path / "params.yaml"), str(tmp_path))  # no search_cron
    assert len(deployment.schedules) == 1
    schedule = deployment.schedules[0].schedule
    assert schedule.cron == "15 4 * * 1" and schedule.timezone == "Europe/Paris"
    assert deployment.parameters == {"repo": str(tmp_path)}
    assert deployment.flow_name == "pruning-pipeline"

    write_params(tmp_path, {"schedule": {"cron": "15 4 * * 1", "search_cron": "0 5 * * 0", "timezone": "UTC"}})
    pipeline, search = build_deployments(load_config(tmp_path / "params.yaml"), str(tmp_path))
    assert search.flow_name == "pruning-search" and search.parameters == {"repo": str(tmp_path)}
    assert search.entrypoint.endswith("flows/search.py:search")  # what a worker imports: the runner is chosen inside
    assert [d.schedules[0].schedule.cron for d in (pipeline, search)] == ["15 4 * * 1", "0 5 * * 0"]


def test_serve_refuses_the_ephemeral_server_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run([sys.executable, "-m", "pruning", "serve"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "does not schedule on its ephemeral server" in out.stderr and "Traceback" not in out.stderr


def test_flow_runs_stages_in_process_only_with_the_repository_s_own_code(tmp_path):
    from flows.pipeline import _runs_same_code

    assert _runs_same_code(tmp_path)  # no pruning/ here: the installed package is the code
    shutil.copytree(REPO / "pruning", tmp_path / "pruning", ignore=shutil.ignore_patterns("__pycache__"))
    assert _runs_same_code(tmp_path)  # byte-identical copy
    stage = tmp_path / "pruning/stages/train.py"
    stage.write_text(stage.read_text() + "\n# a local change\n")
    assert not _runs_same_code(tmp_path)  # runs `python -m pruning <stage>` there: this copy's code


def test_run_command_launches_its_own_ephemeral_server_and_stops_it(ran_repo, tmp_path_factory, prefect_template):
    """`python -m pruning run` with no PREFECT_API_URL: the flow runs on the server flows/server.py launched ahead of
    the imports, prints the summary, promotes, and leaves no server behind. Started elsewhere, with --params naming
    the workspace's params.yaml, like every stage verb. (Training's progress in a piped run: tests/e2e/test_crash.py.)"""
    import httpx

    repo = ran_repo
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home(prefect_template, tmp_path_factory.mktemp("prefect") / "home"))
    out = subprocess.run([sys.executable, "-m", "pruning", "run", "--params", str(repo / "params.yaml")],
                         cwd=tmp_path_factory.mktemp("elsewhere"), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Gates: PASSED" in out.stdout and "registry: tiny-int8 v1 -> champion" in out.stdout
    assert "Traceback" not in out.stderr
    port = re.search(r"View at http://127\.0\.0\.1:(\d+)/", out.stdout + out.stderr)
    assert port is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port.group(1)}/api/health", timeout=5)
    assert json.loads((repo / "reports/metrics.json").read_text())["macs_reduction"] >= 2.0


@pytest.mark.parametrize("name, message", [("other.yaml", "the flow runs DVC, which reads the params.yaml next to "
                                                           "dvc.yaml"),
                                           ("params.yaml", "no dvc.yaml in")])
def test_run_refuses_a_params_file_dvc_would_not_read_in_one_line(tmp_path, name, message):
    (tmp_path / name).write_text((REPO / "params.yaml").read_text())
    out = subprocess.run([sys.executable, "-m", "pruning", "run", "--params", str(tmp_path / name)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


@PREFECT
def test_ephemeral_server_is_left_to_prefect_when_prefect_api_url_is_set(harness):
    from flows import server

    before = os.environ.get("PREFECT_API_URL")
    assert server.launch() is None  # the harness's server is a "real" one here
    assert os.environ.get("PREFECT_API_URL") == before


@PREFECT
def test_a_user_s_trained_model_and_streamed_dataset_go_through_the_flow_and_dvc_untrained(harness, repo, monkeypatch):
    """A new user's project: their model class (not in the zoo), its weights saved with torch.save(state_dict) by
    their own training, a Dataset reading one small file per sample. train.epochs 0: the dense baseline is their
    model as it is. The flow runs the pipeline and registers the result; DVC then sees it up to date (their data
    module fingerprinted without being imported), sees new weights, and a stage typed by hand imports their code from
    the workspace in a process of its own and records itself."""
    import torch

    from flows.pipeline import pipeline
    from tests import userpkg
    from tests.e2e.test_dvc import DVC, _run

    userpkg.write(repo)
    monkeypatch.syspath_prepend(str(repo))
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        monkeypatch.delitem(sys.modules, name)
    from userpkg.data import datasets
    from userpkg.models import DigitNet

    from pruning.training import Optim, evaluate, fit

    train_set, test_set = datasets(str(repo / "samples"))
    torch.manual_seed(3)
    mine = DigitNet(width=16)
    fit(mine, train_set, Optim(4, 32, 0.05), seed=3, desc="the user's own training")
    torch.save(mine.state_dict(), repo / "weights" / "digitnet.pt")
    expected, _ = evaluate(mine, test_set)  # computed here, not by the pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"] = {"source": "userpkg.data:datasets", "path": "samples"}
    params["model"] = {"arch": "userpkg.models:DigitNet", "kwargs": {"width": 16}, "weights": "weights/digitnet.pt"}
    params["train"]["epochs"] = 0
    params["registry"]["model_name"] = "user-digitnet"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "my model and data", cwd=repo)

    result = pipeline(repo=str(repo))
    assert all(result["ran"].values()) and result["gates"]["passed"] is True
    assert result["promotion"]["model_name"] == "user-digitnet" and result["promotion"]["alias"] == "champion"
    trained = json.loads((repo / "reports/train.json").read_text())
    assert trained["epochs"] == [] and trained["accuracy"] == pytest.approx(expected, abs=1e-9)
    meta = json.loads((repo / "data/meta.json").read_text())
    assert meta["streamed"] and (meta["n_train"], meta["n_test"]) == (600, 200)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["dense"]["accuracy"] == pytest.approx(expected, abs=0.006)  # ONNX Runtime on the same samples
    assert metrics["macs_reduction"] >= 2.0 and metrics["parity_score"] <= 1.0

    again = _run(*DVC, "repro", cwd=repo)
    assert "prepare unchanged" in again and "Running stage 'train'" not in again  # the flow left DVC nothing to do
    # replacing the weights file makes DVC see train (and what follows) as changed
    torch.manual_seed(4)
    torch.save(DigitNet(width=16).state_dict(), repo / "weights" / "digitnet.pt")
    assert "train" in json.loads(_run(*DVC, "status", "--json", cwd=repo))
    _run(sys.executable, "-m", "pruning", "train", cwd=repo)  # their model, imported from the workspace
    status = json.loads(_run(*DVC, "status", "--json", cwd=repo))
    assert "train" not in status and "prune" in status  # recorded by hand; what follows is stale


def _on_the_harness(tmp_path_factory) -> dict[str, str]:
    """The environment of a `python -m pruning run` that talks to the session's server (its failures are what is
    tested, not its own server: tests/e2e/test_flow_states.py and the run command's test start that)."""
    from prefect.settings import get_current_settings

    home = tmp_path_factory.mktemp("prefect-client")
    return {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": get_current_settings().api.url}


@PREFECT
def test_a_user_error_in_a_flow_stage_is_one_line_without_tracebacks_or_retries(harness, repo, tmp_path_factory):
    """A stage failing on bad input (here a damaged .npz the config check cannot see inside) fails the flow at once:
    no Prefect traceback, no retry (the same input fails the same way), exit 2 and the stage's own line last."""
    (repo / "weights" / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    write_params(repo, {"tracking": {"enabled": True, "experiment": "flow-test"},
                        "data": {"source": "npz", "path": "weights/broken.npz"}})
    env = _on_the_harness(tmp_path_factory)
    out = subprocess.run([sys.executable, "-m", "pruning", "run", "--params", str(repo / "params.yaml")], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=600)
    both = out.stdout + out.stderr
    assert out.returncode == 2, both[-3000:]
    assert "Traceback" not in both and "Retrying" not in both and "Retries are exhausted" not in both, both[-3000:]
    last = [ln for ln in out.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("error: ") and "weights/broken.npz is not a readable .npz" in last, last


def test_a_second_run_in_the_same_workspace_is_refused_in_one_line(repo):
    import filelock

    (repo / ".dvc" / "tmp").mkdir(exist_ok=True)
    with filelock.FileLock(str(repo / ".dvc" / "tmp" / "pruning-run.lock"), timeout=0):  # a run in progress
        out = subprocess.run([sys.executable, "-m", "pruning", "run"], cwd=repo, capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: another pipeline run is in progress in {repo}; wait for it to "
                                               "finish (or stop it)"]


def test_the_flow_retries_io_errors_only_and_logs_user_errors_without_their_traceback():
    import logging

    from prefect.states import Failed

    from flows.pipeline import StageFailed, _io_only, _NoUserTracebacks
    from pruning.errors import DataError

    assert _io_only(None, None, Failed(data=ConnectionResetError("network")))
    assert not _io_only(None, None, Failed(data=DataError("data/train.npz is not a split")))
    assert not _io_only(None, None, Failed(data=StageFailed("stage train failed: error: ...")))

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())

    user, io = record(DataError("bad file")), record(OSError("disk"))
    assert _NoUserTracebacks().filter(user) and _NoUserTracebacks().filter(io)
    assert user.exc_info is None and io.exc_info is not None


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_the_run_command_takes_the_flow_and_its_prefect_server_down(repo, tmp_path_factory, prefect_template):
    import signal
    import time

    # a run that cannot end by itself within the test's wait: the children must die of their parent's death
    write_params(repo, {"tracking": {"enabled": True, "experiment": "flow-test"}, "train": {"epochs": 1000}})
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(prefect_home(prefect_template, tmp_path_factory.mktemp("prefect") / "home"))
    parent = subprocess.Popen([sys.executable, "-m", "pruning", "run"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline, family = time.monotonic() + 120, []
    while time.monotonic() < deadline:  # the flow process, then the server it launches first thing
        flow = _children(parent.pid)
        family = flow + [g for f in flow for g in _children(f)]
        if len(family) >= 2:
            break
        time.sleep(0.2)
    assert len(family) >= 2, "the flow and its server did not start"
    # "where is it?" (docs/orchestration.md): passed on to the flow, which dumps stacks; all live
    parent.send_signal(signal.SIGUSR1)
    time.sleep(2)
    assert parent.poll() is None and all(_running(pid) for pid in family), "SIGUSR1 ended the run"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_running(pid) for pid in family):
        time.sleep(0.2)
    left = [pid for pid in family if _running(pid)]
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, "children outlived the killed run command"


@PREFECT
def test_a_run_meeting_another_dvc_command_stops_with_one_line(harness, repo, tmp_path_factory):
    """DVC's repository lock held by another command (a `dvc repro` in progress): the flow's stage cannot take it
    and the run stops with one line — not DVC's LockError traceback, and not a stage run beside the other command."""
    from dvc.repo import Repo

    env = _on_the_harness(tmp_path_factory)
    dvc = Repo(str(repo))
    dvc.lock.lock()
    try:
        out = subprocess.run([sys.executable, "-m", "pruning", "run"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=600)
    finally:
        dvc.lock.unlock()
        dvc.close()
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    last = [ln for ln in out.stderr.splitlines() if ln.strip()][-1]
    assert last == (f"error: stage prepare: another DVC command (dvc repro, another pipeline run) holds the lock of "
                    f"{repo}; wait for it to finish and rerun"), last
    assert not (repo / "data").exists()  # prepare did not run
