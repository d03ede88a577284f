"""The base of every typed configuration section (params.yaml's root, the stages', the methods', the gates').

Frozen and ``extra="forbid"``: an unknown key is an error naming the key, and nothing downstream can change a value
that was validated at the edge. It lives apart from :mod:`pruning.config` so that method plug-ins and the gates can
declare their sections without importing the root configuration (which imports them). Beside it, what reading and
validating params.yaml needs and the config module has no room for: the YAML loader and the workspace path rule.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, field_validator

# The largest magnitude any number in params.yaml may have, whatever the field: a backstop behind each field's own
# bounds, so that no value can mean "forever" or "everything" (an epoch count of 1e30, a threshold of 1e300).
MAX_MAGNITUDE = 1e9
# The most values params.yaml may expand to once its YAML aliases are followed (the whole default file: ~300).
MAX_VALUES = 20_000


def _too_large(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return abs(value) > MAX_MAGNITUDE
    if isinstance(value, list | tuple):
        return any(_too_large(v) for v in value)
    return False


class Section(BaseModel):
    """A frozen section of params.yaml; unknown keys are errors; NaN, infinities and numbers beyond
    :data:`MAX_MAGNITUDE` are out of range everywhere."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        if _too_large(value):
            raise ValueError(f"out of range: numbers in params.yaml stay within ±{MAX_MAGNITUDE:g}")
        return value


_PROTECTED = (".git", ".dvc", "pruning", "flows", "params.yaml", "dvc.yaml", "dvc.lock")


def workspace_path_problem(value: str) -> str | None:
    """Why ``value`` is not a path the pipeline may use inside its workspace, or None."""
    if not value or "\0" in value:
        return "empty or with a NUL character"
    if len(value) > 1024 or any(len(part.encode()) > 255 for part in Path(value).parts):
        return "too long (at most 255 bytes per name, 1024 characters in all)"
    path = Path(value)
    if path.is_absolute() or value.startswith("~"):
        return "must be relative to the workspace (the directory of params.yaml)"
    if ".." in path.parts:
        return "must stay inside the workspace (no ..)"
    if not path.parts or path.parts[0] in _PROTECTED:
        return f"must not be {', '.join(_PROTECTED)} or inside them"
    return None


def link_problem(value: str, root: str | Path) -> str | None:
    """Why ``value`` (a path that passed :func:`workspace_path_problem`) is not inside the workspace ``root`` once its
    symbolic links are followed (``data/`` -> elsewhere, or the file itself linking out), or None: the text stays
    inside, the file a stage reads or writes must too."""
    base = Path(root).resolve()
    try:
        real = (base / value).resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return "is a loop of symbolic links"
    if real.is_relative_to(base):
        return None
    return f"leads outside the workspace through a symbolic link (to {real}): make it a directory or file of the workspace"


def importable_from(workspace: str | Path) -> None:
    """Let ``module:callable`` references (a model, a data source, a loss or metric) import from ``workspace``, the
    directory of params.yaml, as ``python -m`` lets them import from the working directory: its absolute path goes
    first on sys.path. The one place the workspace is put there (validating params.yaml calls it); a user's code is
    trusted, the files of the workspace are only read through the safe loaders."""
    where = str(Path(workspace).absolute())
    if where not in sys.path:
        sys.path.insert(0, where)


class TooLarge(ValueError):
    """The document expands to more than :data:`MAX_VALUES` values."""


class NotPlain(ValueError):
    """A value of a YAML type beyond text, numbers, booleans, null, lists and mappings (``!!binary``, a date, a
    ``!!set``...): the schema may coerce it (bytes pass as text), but DVC hashes params as JSON and fails on it in the
    middle of a run. ``key``: where (``a.b[0]``), ``line``: 1-based."""

    def __init__(self, key: str, line: int, what: str) -> None:
        super().__init__(f'"{key}" (line {line}) {what}')
        self.key, self.line, self.what = key, line, what


_YAML = "tag:yaml.org,2002:"
_ONLY = "params hold text, numbers, booleans, null, lists and mappings only (DVC hashes them as JSON)"
_NOT_PLAIN = {f"{_YAML}binary": f"a !!binary value (bytes): {_ONLY}",
              f"{_YAML}timestamp": "a date or time (YAML reads an unquoted 2026-01-31 as one): quote it to keep it text",
              f"{_YAML}set": f"a !!set: {_ONLY}", f"{_YAML}omap": f"an !!omap: {_ONLY}",
              f"{_YAML}pairs": f"a !!pairs list: {_ONLY}"}


MAX_FLOW_DEPTH = 100  # nested [ ] / { } of a params file (real ones nest fewer than ten levels)


def _flow_too_deep(text: str) -> bool:
    """True when the text's flow collections nest beyond :data:`MAX_FLOW_DEPTH`, found in one linear pass (quoted
    text and comments skipped). Why: PyYAML's scanner takes time quadratic in that depth, seconds at a few thousand,
    before its own recursion limit rejects the file."""
    depth, quote, comment = 0, "", False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                return True
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return False


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded (a 1 KB "billion laughs" file holds 10**9),
    computed on the node graph in linear time: each node's size once, aliases counted as often as they occur."""
    sizes: dict[int, int] = {}
    order, stack = [], [root]
    while stack:  # post-order without recursion (a 5000-deep document must not overflow the stack)
        node = stack.pop()
        if id(node) in sizes:
            continue
        sizes[id(node)] = 0
        order.append(node)
        if isinstance(node, yaml.MappingNode):
            stack += [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    for node in reversed(order):
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_VALUES + 1)
    return sizes[id(root)]


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (safe_load keeps the last silently; DVC refuses
    the file later, in the middle of a run) and a document that expands to more than :data:`MAX_VALUES` values. Both
    are found on the composed node tree, before any object is constructed; the values are then constructed from that
    same tree (one parse). libyaml's composer (10x faster) only where the text cannot nest deeply: it recurses in C,
    and a deeply nested file would crash the interpreter instead of raising RecursionError (the pure-Python loader's)."""
    if _flow_too_deep(text):
        raise RecursionError(f"nests [ ] / {{ }} deeper than {MAX_FLOW_DEPTH} levels")  # as PyYAML itself would, sooner
    loader = yaml.CSafeLoader(text) if _shallow(text) else yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        _check_nodes(root)
        return loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def _shallow(text: str) -> bool:
    """True when no line can open more than :data:`MAX_FLOW_DEPTH` block levels: a block collection nests by indenting
    or by ``- ``, ``? `` and ``: `` on one line, so a line's indentation plus its count of those characters bounds the
    depth it reaches (an overcount only costs the slower loader). Flow collections are :func:`_flow_too_deep`'s."""
    if not getattr(yaml, "__with_libyaml__", False):
        return False
    return all(len(line) - len(line.lstrip(" ")) + line.count("-") + line.count("?") + line.count(":") < MAX_FLOW_DEPTH
               for line in text.splitlines())


def _check_nodes(root: yaml.Node | None) -> None:
    """TooLarge when ``root`` expands beyond :data:`MAX_VALUES` values; a ConstructorError naming a duplicate key;
    NotPlain naming a value of a type params cannot hold (tags the safe loader does not know are its to refuse)."""
    if root is not None and _expanded_size(root) > MAX_VALUES:
        raise TooLarge(f"expands to more than {MAX_VALUES} values once its YAML aliases are followed")
    stack: list[tuple[yaml.Node, str]] = [(root, "(top level)")] if root is not None else []
    visited: set[int] = set()
    while stack:
        node, where = stack.pop()
        if id(node) in visited:  # an alias shares its node: each once (no blow-up, no loop)
            continue
        visited.add(id(node))
        if node.tag in _NOT_PLAIN:
            raise NotPlain(where, node.start_mark.line + 1, _NOT_PLAIN[node.tag])
        inside = "" if where == "(top level)" else where
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key.value!r}",
                                                                key.start_mark)
                    seen.add(key.value)
                path = f"{inside}.{name}" if inside else str(name)
                stack += [(key, path), (value, path)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{inside}[{i}]") for i, item in enumerate(node.value)]
