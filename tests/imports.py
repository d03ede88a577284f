"""What a module imports from its own package, transitively, as Python runs it: every import statement (module level
or inside a function) except those under ``if TYPE_CHECKING:``, plus the ``__init__`` of every package on the way."""

from __future__ import annotations

import ast
import functools
from pathlib import Path


def module_files(root: Path, package: str) -> dict[str, Path]:
    files = {}
    for f in (root / package).rglob("*.py"):
        rel = f.relative_to(root).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        files[name] = f
    return files


@functools.cache
def _parsed(source: str) -> ast.Module:
    """A source's syntax tree, parsed once per test session (the checks walk the package many times; keyed on the
    text, so a file rewritten by a test is parsed again)."""
    return ast.parse(source)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def direct_imports(name: str, path: Path, modules: dict[str, Path], package: str,
                   type_checking: bool = False) -> set[str]:
    """The modules of ``package`` that ``name`` imports (``type_checking``: also those under TYPE_CHECKING)."""
    tree = _parsed(path.read_text())
    skip = set() if type_checking else _type_checking_blocks(tree)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == package:
                out.add(t)
    return out


def transitive(start: str, root: Path, package: str = "pruning") -> set[str]:
    """Every module of ``package`` that importing ``start`` runs (``start`` included)."""
    modules = module_files(root, package)
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages on the way run their __init__
        todo += sorted(direct_imports(name, modules[name], modules, package))
    return seen


def files(names: set[str], root: Path, package: str = "pruning") -> set[str]:
    modules = module_files(root, package)
    return {modules[n].relative_to(root).as_posix() for n in names}


def import_cycles(root: Path, package: str) -> list[list[str]]:
    """The import cycles among ``package``'s modules (strongly connected components of more than one module), counting
    imports under TYPE_CHECKING, inside functions, and a submodule's import of its own package face (the face imports
    the submodule, so that is a cycle)."""
    modules = module_files(root, package)
    edges = {m: {t for t in direct_imports(m, f, modules, package, type_checking=True) if t != m}
             for m, f in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

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
    return cycles
