"""params.yaml's ``search:`` section: what ``python -m pruning search`` explores, how long, what "best" means, and
where its trials run. Its ``space`` is checked against the method Configs when params.yaml is loaded
(:func:`pruning.search.space.check_space`), so a bad key or range is a one-line error before any trial runs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pruning.schema import Section

# objective name -> (report, key) of the value a search maximises; "shipped": the model the gates judge as shipped
OBJECTIVES: dict[str, tuple[str, str]] = {
    "speedup_b1": ("latency", "shipped_speedup_b1"),
    "speedup_bN": ("latency", "shipped_speedup_bN"),
    "macs_reduction": ("metrics", "macs_reduction"),
}
Objective = Literal["speedup_b1", "speedup_bN", "macs_reduction"]  # the keys of OBJECTIVES (a test keeps them equal)

class SearchConfig(Section):
    """``python -m pruning search``: Optuna explores ``space`` from the pipeline's dense model, every gate a
    constraint; the trials run as Prefect tasks on Dask (docs/search.md)."""

    trials: int = Field(8, ge=1, le=10_000, description="trials to finish (those of a resumed search count)")
    timeout: float | None = Field(None, gt=0, le=30 * 86_400, description="seconds after which no new trial starts "
                                  "(null: no limit)")
    objective: Objective = Field("speedup_b1", description="what the search maximises, subject to every gate: "
                                 "speedup_b1 | speedup_bN | macs_reduction (the shipped model's measured speedup over "
                                 "the dense one at batch 1 or N, or the MACs reduction); the task metric is its second "
                                 "objective")
    workers: int | None = Field(None, ge=1, le=1024, description="trials at once: the local Dask cluster's worker "
                                "processes, or the trials in flight on dask_address's cluster; null: this machine's "
                                "cores / threads (the params' threads, else torch's default: one worker), or one per "
                                "thread of the remote cluster's workers")
    dask_address: str | None = Field(None, min_length=1, description="an existing Dask scheduler (tcp://host:8786) "
                                     "whose workers see this workspace at the same path; null: a local cluster")
    space: dict[str, Any] = Field(default_factory=dict, description="dotted params keys -> a list of choices or a "
                                  "range {low, high, step, log}; prune.* keys apply to the methods whose Config has "
                                  "them (docs/search.md); empty: no search (params.yaml ships an example)")

    @field_validator("dask_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("expected a scheduler address such as tcp://host:8786")
        return value
