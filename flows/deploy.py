"""Serve the pipeline flow as a Prefect deployment on the cron schedule of params.yaml (``schedule.cron``), and the
search flow beside it when ``schedule.search_cron`` is set.

``python -m pruning serve`` runs :func:`serve`: a long-running process that Prefect's server triggers on schedule.
Prefect does not schedule on its ephemeral server: start ``prefect server start`` and set PREFECT_API_URL first.
"""

from __future__ import annotations

import os
import sys

from prefect.schedules import Cron

from flows.pipeline import PARAMS, pipeline
from pruning.config import Config, load_config

DEPLOYMENT = "scheduled"


def build_deployment(cfg: Config, repo: str):
    """The deployment: the pipeline flow, cron and timezone from params.yaml, run in ``repo``."""
    return pipeline.to_deployment(
        name=DEPLOYMENT,
        schedule=Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone),
        parameters={"repo": repo},
        description=f"Pruning pipeline on {cfg.schedule.cron} ({cfg.schedule.timezone}); params from {PARAMS}",
        tags=["pruning", cfg.registry.model_name],
    )


def build_deployments(cfg: Config, repo: str) -> list:
    """What :func:`serve` serves: the pipeline's deployment, and the search's when ``schedule.search_cron`` is set
    (its winner goes through the registry rules; params.yaml is left as it is: no ``--apply`` on a schedule)."""
    deployments = [build_deployment(cfg, repo)]
    if cfg.schedule.search_cron is not None:
        from flows.search import search

        deployments.append(search.to_deployment(
            name=DEPLOYMENT,
            schedule=Cron(cfg.schedule.search_cron, timezone=cfg.schedule.timezone),
            parameters={"repo": repo},
            description=f"Pruning search on {cfg.schedule.search_cron} ({cfg.schedule.timezone}); params from "
                        f"{PARAMS}",
            tags=["pruning", "search", cfg.registry.model_name],
        ))
    return deployments


def serve() -> None:
    """Serve the deployments until interrupted (Ctrl-C, SIGTERM): Prefect then pauses their schedules and returns."""
    import gc

    from prefect import serve as prefect_serve

    deployments = build_deployments(load_config(PARAMS), os.getcwd())
    # The flow's imports (torch, every method) live until exit: freezing them spares the interpreter's shutdown a
    # collection over all of them, which made a Ctrl-C take seconds to stop an idle server (docs/design.md,
    # "Measured reasons").
    gc.freeze()
    prefect_serve(*deployments)


def main() -> int:
    from rich.console import Console

    from pruning.errors import PruningError

    if not os.environ.get("PREFECT_API_URL"):
        Console(stderr=True).print(
            "[red]error:[/] Prefect does not schedule on its ephemeral server: run `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api", highlight=False, soft_wrap=True)
        return 2
    try:
        serve()
    except PruningError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
