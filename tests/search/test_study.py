"""The search loop: trials judged by the gates, the Pareto front of those that passed, and a killed search resumed
without redoing finished trials."""

import json

from pruning.config import load_config
from pruning.search.space import parse_space, trial_config
from pruning.search.study import open_study, run_search


def test_a_search_keeps_every_trial_fronts_only_passing_ones_and_resumes_after_a_kill(golden, tmp_path):
    base = trial_config(load_config(golden / "params.yaml"), {"prune.iterative_steps": 1, "finetune.epochs": 1})
    space = parse_space({"prune.ratio": [0.25, 0.5]})  # a quarter of the channels misses the 2x MACs gate
    directory = tmp_path / "search"
    first = run_search(golden, base, space, directory, trials=3, objective="macs_reduction")
    assert first.resumed == 0 and [r.number for r in first.trials] == [0, 1, 2]
    for r in first.trials:
        assert r.error is None and r.passed == (r.params["prune.ratio"] == 0.5)
        assert r.passed == (r.metrics["macs_reduction"] >= 2.0)
    assert first.front and all(r.passed for r in first.front)
    assert {r.number for r in first.front} <= {r.number for r in first.trials if r.params["prune.ratio"] == 0.5}
    written = json.loads((directory / "trials.json").read_text())
    assert [t["number"] for t in written["trials"]] == [0, 1, 2] and written["objective"] == "macs_reduction"
    assert json.loads((directory / "pareto.json").read_text())["front"] == [r.number for r in first.front]
    # the front measured again, alone: both figures kept, the winner the best of those still passing
    assert all(r.remeasured is not None and r.remeasured["latency"]["pruned"]["latency_ms_b1"] > 0 for r in first.front)
    assert first.winner is not None and first.winner.remeasured["passed"] and first.winner in first.front
    assert json.loads((directory / "pareto.json").read_text())["winner"] == first.winner.number

    # the search is killed while trial 3 runs: its journal holds a running trial; the rerun marks it failed, keeps
    # the three finished ones (their directories untouched) and runs one more to reach four
    stamps = {p: p.stat().st_mtime_ns for p in directory.glob("trials/*/models/finetuned.pt")}
    open_study(directory, base).ask()
    second = run_search(golden, base, space, directory, trials=4, objective="macs_reduction")
    assert second.resumed == 3 and [r.number for r in second.trials] == [0, 1, 2, 4]
    assert {p: p.stat().st_mtime_ns for p in directory.glob("trials/000[0-2]/models/finetuned.pt")} == stamps
    journal = open_study(directory, base).get_trials()  # the study as Optuna holds it
    states = {t.number: t.state.name for t in journal}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "FAIL", 4: "COMPLETE"}
    feasible = {t.number for t in journal if t.constraints and max(t.constraints.values()) <= 0}
    assert feasible == {r.number for r in second.trials if r.passed}  # what the sampler knows of the gates

    # another space: the old trials are of another search; they go, and a new study starts at trial 0
    third = run_search(golden, base, parse_space({"prune.ratio": [0.5]}), directory, trials=1,
                       objective="macs_reduction")
    assert third.resumed == 0 and [r.number for r in third.trials] == [0]
    assert sorted(p.name for p in (directory / "trials").iterdir()) == ["0000"]


def test_the_objectives_are_one_list_in_the_schema_params_yaml_and_the_docs():
    from typing import get_args

    from pruning.search.config import OBJECTIVES, Objective, SearchConfig
    from tests.conftest import REPO

    assert get_args(Objective) == tuple(OBJECTIVES)
    listed = " | ".join(OBJECTIVES)
    assert listed in SearchConfig.model_fields["objective"].description
    assert listed in (REPO / "params.yaml").read_text() and listed in (REPO / "docs/search.md").read_text()
