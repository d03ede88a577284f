"""MLflow model registry: a pipeline run's shipped model becomes a version; ``champion`` / ``challenger`` move by the
rules of :func:`promote`. Beside :mod:`pruning.tracking` (runs), whose store set-up, lock and error mapping it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning import faults
from pruning.errors import PruningError
from pruning.tracking.pipeline import metric_name
from pruning.tracking.store import FP32_MODEL_TAG, INT8_MODEL_TAG, lock, setup, store_errors

if TYPE_CHECKING:
    from pruning.config import Config


@dataclass(frozen=True)
class Promotion:
    """Outcome of registering a run's INT8 model."""

    model_name: str
    version: str
    alias: str | None  # "champion", "challenger" or None
    reason: str


def _champion_value(client: Any, champion: Any, metric: str) -> float | None:
    """The champion's value of ``metric``: its version tag, else its pipeline run's metric, else None."""
    if metric in champion.tags:
        return float(champion.tags[metric])
    run_id = champion.tags.get("run_id")
    try:
        value = logged(client.get_run(run_id), metric) if run_id else None
    except Exception:  # noqa: BLE001 - a deleted run: nothing to compare with
        return None
    return float(value) if value is not None else None


def logged(run: Any, metric: str) -> float | None:
    """A run's value of a metrics.json / latency.json name (``..._bN`` is logged under its batch size, ``..._b32``)."""
    n = run.data.params.get("latency.batch_size_N")
    value = run.data.metrics.get(metric_name(metric, int(n) if n and n.isdigit() else None))
    return run.data.metrics.get(metric) if value is None else value


def _beats(new: float, old: float, greater_is_better: bool) -> bool:
    return new > old if greater_is_better else new < old


def promote(run_id: str, cfg: Config, root: str | Path = ".") -> Promotion:
    """Register the run's shipped model as a new version and move aliases by the rules.

    ``champion`` moves only if every gate passed AND the version beats the current champion on
    ``registry.primary_metric``; a passing version that does not beat it gets ``challenger``; a failing one gets no
    alias. Gate checks become version tags; the tag ``decision`` is written last.

    Idempotent and race-free on one machine: the whole decision holds a lock per store (:func:`lock`), so two promotes
    of one run give one version and two runs promoted at once are compared with each other; a run already registered
    whose promote was killed before its ``decision`` tag gets its tags and alias decision now.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    setup(cfg.tracking.experiment, root)
    client = mlflow.MlflowClient()
    uri = mlflow.get_tracking_uri()
    with store_errors(uri):
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise PruningError(f"MLflow run {run_id!r} not found at {uri}") from None
        # the model the evaluate stage chose to ship (evaluate.ship): INT8 where it pays, else the pruned fp32 model
        shipped = run.data.tags.get("shipped", "int8")
        model_tag = INT8_MODEL_TAG if shipped == "int8" else FP32_MODEL_TAG
        if model_tag not in run.data.tags:
            raise PruningError(f"MLflow run {run_id!r} has no {shipped} model (tag {model_tag}); is it a pipeline run?")
        gates = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gates.json")
        value = logged(run, cfg.registry.primary_metric)
        if value is None:
            raise PruningError(f'the primary metric "{cfg.registry.primary_metric}" was not logged in run {run_id}',
                               field="primary_metric")
        with lock(uri, "registry"):
            return _promote(client, run, cfg, model_tag, shipped, gates, float(value))


def _registered(client: Any, name: str, run_id: str) -> Any | None:
    """The version registered from ``run_id``, or None. Searched by the run's id (hex digits), not by the name: a
    filter string cannot quote every name MLflow accepts (``a'b``)."""
    found = [v for v in client.search_model_versions(f"run_id='{run_id}'")
             if v.name == name and v.tags.get("run_id") == run_id]
    return min(found, key=lambda v: int(v.version)) if found else None


def _promote(client: Any, run: Any, cfg: Config, model_tag: str, shipped: str, gates: dict[str, Any],
             value: float) -> Promotion:

    run_id, name, metric = run.info.run_id, cfg.registry.model_name, cfg.registry.primary_metric
    mv = _registered(client, name, run_id)
    if mv is not None and "decision" in mv.tags:
        mv = client.get_model_version(name, mv.version)  # its aliases now
        aliases = [a for a in ("champion", "challenger") if a in (mv.aliases or [])]
        return Promotion(name, str(mv.version), aliases[0] if aliases else None,
                         f"already registered ({mv.tags['decision']})")
    if mv is None:
        mv = _register(client, name, run, model_tag, gates)
        faults.point("promote:registered")
    # the primary metric in full precision: the next promote compares its own value with this tag
    tags = {"shipped": shipped, "gates": "passed" if gates["passed"] else "failed", metric: repr(value),
            "params_hash": run.data.tags.get("params_hash", ""), "git_commit": run.data.tags.get("git_commit", "")}
    for check in gates["checks"]:
        tags[f"gate.{check['name']}"] = (f"{'pass' if check['passed'] else 'FAIL'}: {check['metric']} = "
                                         f"{_g(check['value'])} {check['op']} {_g(check['threshold'])}")
    for key, text in tags.items():
        client.set_model_version_tag(name, mv.version, key, text)
    promotion = _decide(client, cfg, mv, value, gates)
    client.update_model_version(name, mv.version, description=_verdict(gates, promotion) + "\n\n" +
                                (run.data.tags.get("mlflow.note.content") or ""))
    client.set_model_version_tag(name, mv.version, "decision", promotion.reason)  # last: the promotion is complete
    return promotion


def _g(value: Any) -> str:
    """A gate's number as the summary prints it: 4 significant digits."""
    return "missing" if value is None else f"{value:.4g}" if isinstance(value, int | float) else str(value)


def _verdict(gates: dict[str, Any], promotion: Promotion | None) -> str:
    """The first line of a version's description: the gate verdict and the alias decision, where the UI shows it
    (the version list's green check only means the files were registered). Plain text: the versions list shows the
    description's first line as it is, markdown marks included."""
    if gates["passed"]:
        head = f"GATES PASSED ({len(gates['checks'])} of {len(gates['checks'])})"
    else:
        failed = [c["name"] for c in gates["checks"] if not c["passed"]]
        head = f"GATES FAILED: {', '.join(failed)} — not for deployment"
    return head + (f" · {promotion.alias or 'no alias'}: {promotion.reason}" if promotion else "")


def _register(client: Any, name: str, run: Any, model_tag: str, gates: dict[str, Any]) -> Any:
    """A new version of ``name`` from the run's shipped model, its Source Run the pipeline (parent) run — not the
    nested stage run that logged the ONNX file, which holds neither the gates nor the summary."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Pruned ONNX models of the pruning pipeline; alias "
                                       "`champion`: the best version that passed every gate.")
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    uri = run.data.tags[model_tag]
    model_id = uri.removeprefix("models:/") if uri.startswith("models:/m-") else None
    return client.create_model_version(name, uri, run_id=run.info.run_id, tags={"run_id": run.info.run_id},
                                       description=_verdict(gates, None), model_id=model_id)


def _decide(client: Any, cfg: Config, mv: Any, value: float, gates: dict[str, Any]) -> Promotion:
    """Move ``champion`` / ``challenger`` for version ``mv`` (under the registry lock)."""
    from mlflow.exceptions import MlflowException

    name, metric = cfg.registry.model_name, cfg.registry.primary_metric
    if not gates["passed"]:
        failed = ", ".join(c["name"] for c in gates["checks"] if not c["passed"])
        return Promotion(name, str(mv.version), None, f"gates failed: {failed}")
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == str(mv.version):
        return Promotion(name, str(mv.version), "champion", "already champion")
    old = _champion_value(client, champion, metric) if champion is not None else None
    if champion is not None and old is None:
        # the champion was judged on another primary metric (params changed) and its run has no value for this one:
        # there is nothing to compare, and a champion nobody can beat would freeze the registry
        client.set_registered_model_alias(name, "champion", mv.version)
        return Promotion(name, str(mv.version), "champion", f"champion v{champion.version} has no {metric} to compare "
                         "(registry.primary_metric changed): replaced")
    if champion is not None and old is not None:
        better = cfg.registry.greater_is_better
        if better is None:  # the task metric's own direction
            from pruning.task import build_task

            better = build_task(cfg.task).greater_is_better
        if not _beats(value, old, better):
            client.set_registered_model_alias(name, "challenger", mv.version)
            return Promotion(name, str(mv.version), "challenger",
                             f"{metric} {value:.4g} does not beat champion v{champion.version} ({old:.4g})")
    client.set_registered_model_alias(name, "champion", mv.version)
    reason = "first champion" if champion is None else f"beats champion v{champion.version} on {metric}"
    return Promotion(name, str(mv.version), "champion", reason)
