"""What a pipeline flow run shows in Prefect besides its state: the gate verdict as a tag, and where its MLflow run is
(the end of the ``pruning-summary`` artifact). Called from inside the flow (flows/pipeline.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_client
from prefect.context import FlowRunContext


def tag_gates(passed: bool) -> None:
    """Tag this flow run ``gates:passed`` or ``gates:failed``: a run is Completed whatever its gates say, and the run
    list shows tags, not return values. Prefect's update replaces the tags: keep the others (a deployment's)."""
    run = FlowRunContext.get().flow_run
    tags = [t for t in run.tags if not t.startswith("gates:")] + [f"gates:{'passed' if passed else 'failed'}"]
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=tags)
    run.tags = tags


def mlflow_link(uri: str, experiment_id: str, run_id: str) -> str:
    """Markdown saying where an MLflow run is: links into the UI of a tracking server (the run, and the experiment's
    runs table), or for a local sqlite store the command that opens its UI. Another store's URI is not written out: it
    may hold a database password. The links open the UI's model-training view (:data:`UI_VIEW`), not its GenAI one."""
    from urllib.parse import urlsplit, urlunsplit

    from pruning.tracking import UI_VIEW

    url = urlsplit(uri)
    run, table = f"#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}", f"#/experiments/{experiment_id}/runs?{UI_VIEW}"
    if url.scheme in ("http", "https"):  # without user:password@, query and fragment
        bare = urlunsplit((url.scheme, url.netloc.rpartition("@")[2], url.path.rstrip("/"), "", ""))
        return f"[Open the run in the MLflow UI]({bare}/{run}), or [all the runs]({bare}/{table})."
    if url.scheme == "sqlite":
        return (f"It is in the local store `{uri}`: open the UI with `mlflow ui --backend-store-uri {uri}`, then "
                f"<http://127.0.0.1:5000/{run}> (all the runs: <http://127.0.0.1:5000/{table}>)")
    return f"It is in the store of MLFLOW_TRACKING_URI ({url.scheme}); in its UI: `{run}`."


def mlflow_markdown(recorded: dict[str, Any], root: Path) -> str:
    """The summary's MLflow section: the evaluate stage's parent run (reports/mlflow_run.json) and how to open it."""
    if not recorded["run_id"]:
        return "\n## MLflow\n\nNot logged: tracking is off (`tracking.enabled: false`).\n"
    import mlflow

    from pruning.tracking import setup

    # the store and experiment the evaluate stage logged to (MLFLOW_TRACKING_URI, else the workspace's sqlite store)
    experiment_id = setup(recorded["experiment"], root)
    return (f"\n## MLflow\n\nParent run `{recorded['run_id']}` in experiment `{recorded['experiment']}` (id "
            f"{experiment_id}). {mlflow_link(mlflow.get_tracking_uri(), experiment_id, recorded['run_id'])}\n")
