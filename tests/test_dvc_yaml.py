"""dvc.yaml against the one table of stages (pruning/stages/__init__.py) and against the code: a stage's deps cover
every pruning/ module its code imports (transitively), and its params every params.yaml key its code reads."""

from __future__ import annotations

import ast
import copy
from typing import Any

import pytest
import yaml

from pruning.config import Config
from pruning.stages import STAGES, Stage
from tests.conftest import REPO
from tests.imports import files, transitive


def _dvc() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _names(entries: list[Any]) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _config_reads(stage: Stage) -> set[tuple[str, ...]]:
    """``cfg.a.b`` chains in the stage's own module (stage modules are the only code that reads the config)."""
    tree = ast.parse((REPO / "pruning" / "stages" / f"{stage.name}.py").read_text())
    chains = set()
    for node in ast.walk(tree):
        chain: list[str] = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == "cfg" and chain and chain[0] in Config.model_fields:
            chains.add(tuple(chain))
    return {c for c in chains if not any(c != o and o[:len(c)] == c for o in chains)}  # the longest chains


def problems(dvc: dict[str, Any]) -> list[str]:
    """Everything dvc.yaml says that the table and the code contradict (empty: they agree)."""
    out = []
    stages = dvc["stages"]
    if list(stages) != [s.name for s in STAGES]:
        out.append(f"stages {list(stages)} != the table's {[s.name for s in STAGES]}")
    for stage in STAGES:
        entry = stages.get(stage.name, {})
        if entry.get("cmd") != f"python -m pruning {stage.name}":
            out.append(f"{stage.name}: cmd {entry.get('cmd')!r}")
        if sorted(entry.get("params", [])) != sorted(stage.params):
            out.append(f"{stage.name}: params {entry.get('params')} != the table's {list(stage.params)}")
        deps = entry.get("deps", [])
        for key in stage.reads:
            if f"${{paths.{key}}}" not in deps:
                out.append(f"{stage.name}: deps lack ${{paths.{key}}}")
        outs = set(_names(entry.get("outs"))) | set(_names(entry.get("metrics")))
        if outs != {f"${{paths.{k}}}" for k in stage.writes}:
            out.append(f"{stage.name}: outs {sorted(outs)} != the table's writes {list(stage.writes)}")
        code = files(transitive(f"pruning.stages.{stage.name}", REPO), REPO)
        for path in sorted(code):
            if not any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps):
                out.append(f"{stage.name}: deps lack {path} (imported by its code)")
        for chain in _config_reads(stage):
            if chain[0] != "paths" and not any(tuple(p.split(".")) == chain[:len(p.split("."))] for p in stage.params):
                out.append(f"{stage.name}: params lack {'.'.join(chain)} (read by pruning/stages/{stage.name}.py)")
    return out


def test_dvc_yaml_agrees_with_the_stage_table_and_the_code():
    assert problems(_dvc()) == []


@pytest.mark.parametrize(("stage", "narrower"), [("train", ["pruning/training.py"]), ("prune", ["pruning/methods"]),
                                                 ("evaluate", ["pruning/tracking"]), ("prepare", [])])
def test_the_check_fails_when_a_stage_s_code_dep_misses_a_module_it_imports(stage, narrower):
    mutated = copy.deepcopy(_dvc())
    deps = mutated["stages"][stage]["deps"]
    deps[deps.index("pruning"):deps.index("pruning") + 1] = narrower
    found = problems(mutated)
    assert found and all(p.startswith(f"{stage}: deps lack pruning/") for p in found), found


def test_the_check_fails_when_a_param_or_an_output_goes_missing():
    mutated = copy.deepcopy(_dvc())
    mutated["stages"]["prune"]["params"].remove("export.opset")
    mutated["stages"]["evaluate"]["outs"].pop()
    assert problems(mutated) == ["prune: params ['model.arch', 'seed', 'device', 'threads', 'distributed', 'task', "
                                 "'prune'] != the table's ['seed', 'device', 'threads', 'distributed', 'model.arch', "
                                 "'task', 'prune', 'export.opset']",
                                 "evaluate: outs ['${paths.gates}', '${paths.headline}', '${paths.latency_metrics}', "
                                 "'${paths.metrics}'] != the table's writes ['metrics', 'latency_metrics', 'gates', "
                                 "'headline', 'mlflow_run']"]


def test_the_config_reads_of_a_stage_are_found_in_its_code():
    reads = _config_reads(next(s for s in STAGES if s.name == "prune"))
    assert ("export", "opset") in reads and ("prune", "method") in reads and ("seed",) in reads
