"""The base of every typed configuration section (params.yaml's root, the stages', the methods', the gates').

Frozen and ``extra="forbid"``: an unknown key is an error naming the key, and nothing downstream can change a value
that was validated at the edge. It lives apart from :mod:`pruning.config` so that method plug-ins and the gates can
declare their sections without importing the root configuration (which imports them). Beside it, what reading and
validating params.yaml needs and the config module has no room for: the YAML loader and the workspace path rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen section of params.yaml; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_PROTECTED = (".git", ".dvc", "pruning", "flows", "params.yaml", "dvc.yaml", "dvc.lock")


def workspace_path_problem(value: str) -> str | None:
    """Why ``value`` is not a path the pipeline may use inside its workspace, or None."""
    if not value or "\0" in value:
        return "empty or with a NUL character"
    path = Path(value)
    if path.is_absolute() or value.startswith("~"):
        return "must be relative to the workspace (the directory of params.yaml)"
    if ".." in path.parts:
        return "must stay inside the workspace (no ..)"
    if not path.parts or path.parts[0] in _PROTECTED:
        return f"must not be {', '.join(_PROTECTED)} or inside them"
    return None


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (safe_load keeps the last silently; DVC refuses
    the file later, in the middle of a run). The duplicates are found on the composed node tree, which constructs no
    object, so only safe_load ever builds values."""
    stack, visited = [yaml.compose(text, Loader=yaml.SafeLoader)], set()
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
    return yaml.safe_load(text)
