"""The walls of ../shared/ARCHITECTURE.md, checked on the code: file size, import cycles, who imports what, and
library code that speaks in its own words."""

from __future__ import annotations

import ast
import re
import subprocess

from tests.conftest import REPO
from tests.imports import direct_imports, module_files

SECTIONS = ("seed", "device", "data", "model", "train", "prune", "finetune", "export", "quantize", "evaluate", "gates",
            "tracking", "registry", "schedule", "paths", "bench")
# the edge of the configuration: these may name params.yaml keys (they validate it, or translate errors into it)
EDGE = ("pruning/config.py", "pruning/references.py", "pruning/cli.py", "pruning/stages/")  # params.yaml is read here


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


def test_there_is_no_import_cycle_inside_the_package_counting_type_checking_and_function_level_imports():
    modules = module_files(REPO, "pruning")
    edges = {m: {t for t in direct_imports(m, f, modules, "pruning", type_checking=True)
                 if t != m and not m.startswith(t + ".")} for m, f in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in modules:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_package_imports_no_orchestration_no_benchmark_and_mlflow_only_in_tracking():
    for path in (p for p in _tracked_python() if p.startswith("pruning/")):
        roots = {name.split(".")[0] for name in _imports(path)}
        assert not roots & {"prefect", "flows", "bench", "dvc"}, path
        if not path.startswith("pruning/tracking/"):
            assert "mlflow" not in roots, path


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
