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


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, refusing a key given twice in one mapping (safe_load keeps the last silently; DVC refuses
    the file later, in the middle of a run)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
