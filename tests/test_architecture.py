"""The walls of ../shared/ARCHITECTURE.md, checked on the code: file size, import cycles, who imports what, and
library code that speaks in its own words."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO
from tests.imports import import_cycles

SECTIONS = ("seed", "device", "threads", "distributed",
            "data", "model", "train", "prune", "finetune", "export", "quantize", "evaluate", "gates",
            "tracking", "registry", "schedule", "search", "paths", "bench")
# the edge of the configuration: these may name params.yaml keys (they validate it, or translate errors into it)
EDGE = ("pruning/config.py", "pruning/references.py", "pruning/cli.py", "pruning/stages/",  # params.yaml is read here
        "pruning/search/space.py")  # it validates search.space, whose keys are params keys


def _tracked_python() -> list[str]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split() if (REPO / p).is_file()]


def _imports(path: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_python_file_is_over_400_lines():
    long = {p: n for p in _tracked_python() if (n := len((REPO / p).read_text().splitlines())) > 400}
    assert not long, long


def test_there_is_no_import_cycle_inside_the_package_counting_faces_type_checking_and_function_level_imports():
    assert not import_cycles(REPO, "pruning")


def test_a_submodule_importing_its_own_package_face_is_a_cycle(tmp_path):
    """The check above sees the cycle that hid in pruning/tracking: a face re-exporting a submodule that imports back
    from the face (also when the import is inside a function)."""
    face = tmp_path / "pkg" / "sub"
    face.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (face / "__init__.py").write_text("from pkg.sub.impl import run\nLIMIT = 3\n")
    (face / "impl.py").write_text("def run():\n    from pkg.sub import LIMIT\n    return LIMIT\n")
    assert import_cycles(tmp_path, "pkg") == [["pkg.sub", "pkg.sub.impl"]]
    (face / "impl.py").write_text("def run():\n    return 3\n")
    assert import_cycles(tmp_path, "pkg") == []


def test_gates_are_the_release_checks_only():
    """One name, one idea: a module or test module named ``gates`` is about the acceptance gates (complexity-aware
    training's learned switches are the Bernoulli gates of its own package)."""
    named = [p for p in _tracked_python() if Path(p).stem in ("gates", "test_gates")]
    assert named and all(p.startswith(("pruning/acceptance/", "tests/acceptance/")) for p in named), named


def test_torch_pruning_s_groups_are_walked_in_one_place():
    """dependency.prunable_groups is the one walk over torch-pruning's groups (three copies once disagreed on which
    layer types lead a group)."""
    walking = [p for p in _tracked_python() if p.startswith(("pruning/", "bench/", "flows/"))
               and "get_all_groups(" in (REPO / p).read_text()]
    assert walking == ["pruning/dependency.py"], walking


def test_stages_are_recorded_in_dvc_lock_in_one_place():
    """pruning.record: the flow and a verb typed by hand record through it (no `dvc commit` or `dvc repro` child)."""
    code = [p for p in _tracked_python() if p.startswith(("pruning/", "flows/"))]
    assert not [p for p in code if '"-m", "dvc"' in (REPO / p).read_text()]
    assert [p for p in code if "dvc" in {n.split(".")[0] for n in _imports(p)}] == ["pruning/record.py"]


def test_the_workspace_goes_on_sys_path_in_one_place():
    """schema.importable_from, called when params.yaml is validated: every entry point (CLI verbs, the flow, DVC's
    stage commands) reads params.yaml through it."""
    writing = [p for p in _tracked_python() if p.startswith(("pruning/", "flows/"))
               and re.search(r"sys\.path\.(insert|append)", (REPO / p).read_text())]
    assert writing == ["pruning/schema.py"], writing


def test_the_package_imports_no_orchestration_no_benchmark_mlflow_only_in_tracking_and_dvc_only_to_record():
    for path in (p for p in _tracked_python() if p.startswith("pruning/")):
        roots = {name.split(".")[0] for name in _imports(path)}
        assert not roots & {"prefect", "flows", "bench"}, path
        if not path.startswith("pruning/tracking/"):
            assert "mlflow" not in roots, path
        if path != "pruning/record.py":  # the one path that records a stage in dvc.lock
            assert "dvc" not in roots, path


def test_no_method_criterion_or_allocation_imports_the_zoo():
    """Structure comes from the graph (torch-pruning's dependency graph, residual adds), not from model classes."""
    for path in _tracked_python():
        if path.startswith(("pruning/methods/", "pruning/criteria/", "pruning/allocation/", "pruning/residual.py",
                            "pruning/dependency.py")):
            assert not any(n.startswith("pruning.zoo") for n in _imports(path)), path


def test_library_errors_never_name_a_params_yaml_key():
    key = re.compile(rf"\b({'|'.join(SECTIONS)})\.[a-z_]+")
    for path in _tracked_python():
        if not path.startswith("pruning/") or path.startswith(EDGE):
            continue
        for node in ast.walk(ast.parse((REPO / path).read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = " ".join(c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant)
                                and isinstance(c.value, str))
                assert not key.search(text), f"{path}:{node.lineno} names a params key: {text!r}"
