"""What Prefect shows is the truth: an interrupted run ends Crashed on the server (the test harness's, or the
ephemeral one `python -m pruning run` launches) and its process exits 130 with one line (or dies of its SIGTERM);
training's per-epoch lines are in the flow run's Prefect logs; the summary says where the MLflow run is. Gate tags
and strict runs are checked on test_flow.py's runs (``latest``)."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_params
from tests.e2e.conftest import PREFECT, prefect_home
from tests.e2e.test_flow import _running

EPOCH = "train dense epoch 1/1000"  # a run that cannot end by itself while the test waits


def latest() -> tuple[object, str]:
    """The harness server's latest flow run and the markdown of its `pruning-summary` artifact ('' if none)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)[0]
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["pruning-summary"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return run, (found[0].data if found else "")


def _foreground() -> None:
    """SIGINT as a terminal's foreground process has it. A test run started in the background by a shell without job
    control (``pytest … &`` in a script: POSIX ignores SIGINT there) would hand its children an ignored SIGINT, and
    Python keeps an ignored SIGINT ignored: the flow could not be interrupted, by design of the shell, not of the flow."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def flow_process(repo):
    """Start the pipeline's flow as a user does, `python -m pruning run` (``command="run"``), or its process
    `python -m flows.pipeline` alone (``"flow"``), in a session of its own (a terminal's Ctrl-C goes to such a
    foreground process group), its output to a file as in `python -m pruning run > out.txt 2>&1`. Whatever a failing
    test leaves running in that session is killed."""
    started = []

    def start(home: Path, api_url: str | None, command: str = "flow") -> tuple[subprocess.Popen, Path]:
        write_params(repo, {"tracking": {"enabled": True, "experiment": "flow-test"}, "train": {"epochs": 1000}})
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update({"PREFECT_HOME": str(home), **({"PREFECT_API_URL": api_url} if api_url else {})})
        out = home / "out.txt"
        module = ["pruning", "run"] if command == "run" else ["flows.pipeline"]
        with out.open("w") as f:
            started.append(subprocess.Popen([sys.executable, "-m", *module, "--params", str(repo / "params.yaml")],
                                            cwd=repo, env=env, stdout=f, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_foreground))  # noqa: PLW1509
        return started[-1], out

    yield start
    for process in started:
        session = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split()
        for pid in map(int, session):  # the flow's ephemeral server dies with it (PR_SET_PDEATHSIG); the rest here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def _wait_for(what, process: subprocess.Popen, out: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := what():
            return found
        if process.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"gave up waiting (exit {process.poll()}): {out.read_text()[-3000:]}")


def _exit_code(process: subprocess.Popen, out: Path, timeout: float = 120) -> int:
    """The process's exit code once it has acted on the signal; if it has not within ``timeout`` s, fail with
    where each of its threads is (SIGUSR1: the flow's faulthandler writes the stacks to its output)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGUSR1)
        time.sleep(3)
        pytest.fail(f"still running {timeout:.0f} s after the signal; its output and thread stacks:\n"
                    f"{out.read_text()[-12000:]}")


def _interrupt(process: subprocess.Popen, how: str) -> None:
    if how == "Ctrl-C":
        os.killpg(process.pid, signal.SIGINT)  # the terminal's: the whole foreground group, the ephemeral server's too
    else:
        os.kill(process.pid, getattr(signal, how))  # `kill -INT <pid>`, `kill <pid>` (or PR_SET_PDEATHSIG)


@PREFECT
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_an_interrupted_flow_run_ends_crashed_on_the_server_and_its_epochs_are_in_the_prefect_logs(
        harness, flow_process, tmp_path_factory, how):
    from prefect import get_client
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.objects import StateType
    from prefect.settings import get_current_settings

    # SIGINT to `python -m pruning run` alone (`kill -INT <pid>`: a scheduler, a supervisor); SIGTERM to the flow's
    # process (`python -m pruning run` passes it on: test_flow.py, test_crash.py)
    process, out = flow_process(tmp_path_factory.mktemp("prefect-home"), get_current_settings().api.url,  # no server
                                "run" if how == "SIGINT" else "flow")

    def running_epoch():
        with get_client(sync_client=True) as client:
            running = f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=[StateType.RUNNING]))
            for run in client.read_flow_runs(flow_run_filter=f.FlowRunFilter(state=running)):  # the others have ended
                logs = client.read_logs(log_filter=f.LogFilter(flow_run_id=f.LogFilterFlowRunId(any_=[run.id])))
                if any(EPOCH in log.message for log in logs):
                    return run.id
        return None

    run_id = _wait_for(running_epoch, process, out)  # training's INFO line, through the Prefect API: a stage runs
    if how == "SIGINT":
        # a run that looks hung tells where it is (docs/orchestration.md) and goes on
        os.kill(process.pid, signal.SIGUSR1)
        _wait_for(lambda: "most recent call first" in out.read_text(), process, out, timeout=30)
        assert process.poll() is None, out.read_text()[-3000:]
    _interrupt(process, how)
    rc = _exit_code(process, out)
    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_run_filter=f.FlowRunFilter(id=f.FlowRunFilterId(any_=[run_id])))[0]
    assert run.state.type in (StateType.CRASHED, StateType.CANCELLED), run.state
    text = out.read_text()
    # Ctrl-C: exit 130 and one line; SIGTERM: Prefect ends the process by that signal once it has reported the run
    assert rc == (130 if how == "SIGINT" else -signal.SIGTERM), text[-3000:]
    assert "Traceback" not in text and EPOCH in text, text[-3000:]  # and training's lines in the redirected output
    assert how == "SIGTERM" or text.strip().splitlines()[-1] == "error: interrupted", text[-3000:]


def test_ctrl_c_leaves_the_ephemeral_server_up_until_the_flow_run_has_reported_crashed(flow_process, tmp_path_factory,
                                                                                      prefect_template):
    home = prefect_home(prefect_template, tmp_path_factory.mktemp("prefect") / "home")
    process, out = flow_process(home, None)
    _wait_for(lambda: EPOCH in out.read_text(), process, out)
    # A flow process slower than its server to act on the Ctrl-C (busy in a long C call, a loaded machine): held
    # still while the terminal's SIGINT goes to the foreground group, then let go
    os.kill(process.pid, signal.SIGSTOP)
    _interrupt(process, "SIGINT")
    time.sleep(3)
    os.kill(process.pid, signal.SIGCONT)
    assert _exit_code(process, out) == 130, out.read_text()[-3000:]
    # the server's own database (PREFECT_HOME/prefect.db): the state it recorded before it stopped
    with sqlite3.connect(home / "prefect.db") as db:
        assert db.execute("SELECT state_type FROM flow_run").fetchall() == [("CRASHED",)]
    session = subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split()
    survivors = [int(pid) for pid in session if _running(int(pid))]
    for pid in survivors:  # do not leak a server into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "the ephemeral server outlived the run"


RUN, TABLE = "#/experiments/7/runs/abc?workflowType=machine_learning", "#/experiments/7/runs?workflowType=machine_learning"


@pytest.mark.parametrize("uri, expected", [
    ("http://user:secret@mlflow.example:5000/", f"[Open the run in the MLflow UI](http://mlflow.example:5000/{RUN}), or "
                                                f"[all the runs](http://mlflow.example:5000/{TABLE})."),
    ("https://mlflow.example/tracking", f"[Open the run in the MLflow UI](https://mlflow.example/tracking/{RUN}), or "
                                        f"[all the runs](https://mlflow.example/tracking/{TABLE})."),
    ("sqlite:////work/ws/mlflow.db", "It is in the local store `sqlite:////work/ws/mlflow.db`: open the UI with "
                                     f"`mlflow ui --backend-store-uri sqlite:////work/ws/mlflow.db`, then "
                                     f"<http://127.0.0.1:5000/{RUN}> (all the runs: <http://127.0.0.1:5000/{TABLE}>)"),
    ("postgresql://mlflow:secret@db/mlflow", "It is in the store of MLFLOW_TRACKING_URI (postgresql); in its UI: "
                                             f"`{RUN}`."),
])
def test_the_summary_says_where_the_mlflow_run_is_without_credentials(uri, expected):
    from flows.summary import mlflow_link

    assert mlflow_link(uri, "7", "abc") == expected


def test_the_links_view_query_is_one_the_installed_mlflow_ui_reads():
    """The UI reads ``workflowType`` from the URL (else it opens its GenAI view: checked with a browser); an MLflow
    upgrade that drops it fails here rather than in a user's browser."""
    import mlflow

    from pruning.tracking import UI_VIEW

    key, value = UI_VIEW.split("=")
    bundle = "".join(p.read_text(errors="replace") for p in
                     (Path(mlflow.__file__).parent / "server/js/build/static/js").glob("main.*.js"))
    assert f'.get("{key}")' in bundle and f'MACHINE_LEARNING="{value}"' in bundle
