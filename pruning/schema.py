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
    same tree (one parse). The pure-Python loader on purpose: libyaml's composer recurses in C, and a deeply nested
    file crashes the interpreter instead of raising RecursionError."""
    if _flow_too_deep(text):
        raise RecursionError(f"nests [ ] / {{ }} deeper than {MAX_FLOW_DEPTH} levels")  # as PyYAML itself would, sooner
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        _check_nodes(root)
        return loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node | None) -> None:
    """TooLarge when ``root`` expands beyond :data:`MAX_VALUES` values; a ConstructorError naming a duplicate key."""
    if root is not None and _expanded_size(root) > MAX_VALUES:
        raise TooLarge(f"expands to more than {MAX_VALUES} values once its YAML aliases are followed")
    stack, visited = [root] if root is not None else [], set()
    while stack:
        node = stack.pop()
        if id(node) in visited:  # an alias shares its node: each once (no blow-up, no loop)
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key.value!r}",
                                                                key.start_mark)
                    seen.add(key.value)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
