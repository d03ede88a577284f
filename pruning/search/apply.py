"""``python -m pruning search --apply``: the winner's values written into params.yaml, so that ``dvc repro`` makes
exactly the winner's model (a trial is the pipeline's own stages on the base params with these values put in).

Why ruamel.yaml and not PyYAML here: params.yaml is a file people read, full of comments; a round-trip edit keeps
them, its key order and its layout, and changes only the values the search chose. (DVC edits dvc.lock with the same
library: no new package.) The edited text is validated as params.yaml before it replaces the file, atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pruning.atomic import write_bytes
from pruning.search.space import applies, prune_key, trial_config

if TYPE_CHECKING:
    from pruning.config import Config


def apply(params: Path, base: Config, chosen: Mapping[str, Any]) -> list[str]:
    """Write a trial's ``chosen`` values (dotted keys, as sampled) into ``params``; returns the keys changed, as
    ``key: old -> new`` lines. A change of method replaces the whole ``prune`` section by the trial's."""
    import yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.representer import RoundTripRepresenter

    class _KeepNulls(RoundTripRepresenter):  # ruamel writes a null as nothing; params.yaml says null
        pass

    _KeepNulls.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))

    from pruning.config import validate

    rt = YAML()
    rt.Representer = _KeepNulls
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a line
    data = rt.load(params.read_text(encoding="utf-8"))
    method = str(chosen.get("prune.method", base.prune.method))
    changed: list[str] = []
    if method != base.prune.method:
        data["prune"] = CommentedMap(trial_config(base, chosen).prune.model_dump(mode="json"))
        changed.append(f"prune.method: {base.prune.method} -> {method} (the section replaced by the trial's)")
    for key, value in chosen.items():
        if key == "prune.method" or not applies(key, method):
            continue
        path = prune_key(key)
        node = data
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = CommentedMap()
            node = node[part]
        old = node.get(path[-1])
        if old != value:
            node[path[-1]] = value
            changed.append(f"{'.'.join(path)}: {old} -> {value}")
    out = io.StringIO()
    rt.dump(data, out)
    text = out.getvalue()
    validate(yaml.safe_load(text), str(params))  # the edited file must still be a valid params.yaml
    write_bytes(params, text.encode("utf-8"))
    return changed
