"""README sections that are generated, never hand-typed: the benchmarks' tables (between ``<!-- bench:<name>:start
-->`` / ``end`` markers) and the params.yaml reference, generated from the config models (pruning/config.py and every
method's Config), so the README, the schema and params.yaml cannot disagree.

    python -m bench.readme            # rewrite README.md's params reference
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from pruning.config import Config
from pruning.methods import METHODS

PARAMS_START, PARAMS_END = "<!-- params:start -->", "<!-- params:end -->"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def update_readme(md: str, readme: Path, marks: tuple[str, str]) -> None:
    """Replace the text between the README's markers with ``md``."""
    start, end = marks
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{md}{end}{tail}")


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = [a for a in (field.annotation, *get_args(field.annotation)) if isinstance(a, type)
               and issubclass(a, BaseModel)]
        if sub and name != "gates":
            rows += _rows(sub[0], f"{key}.")
            continue
        if name == "method":
            continue
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_default(field)} | {doc} |")
    return rows


def params_table() -> str:
    """The params reference: every key of the pipeline's sections, its default (= the value params.yaml ships, tested)
    and its meaning; the ``prune`` keys once per method."""
    out = ["| key | default | meaning |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        if name == "paths":
            continue
        if name == "prune":
            for method, module in METHODS.items():
                out.append(f"| **`prune.method: {method}`** | | {module.Config.__doc__.strip().splitlines()[0]} |")
                out += _rows(module.Config, "prune.")
            continue
        sub = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        out += _rows(sub, f"{name}.") if sub else [f"| `{name}` | {_default(field)} | "
                                                    f"{(field.description or '').replace('|', chr(92) + '|')} |"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    update_readme(params_table(), Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"), (PARAMS_START, PARAMS_END))
