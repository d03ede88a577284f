"""The ``params.yaml`` reference of docs/params.md, generated from the config models (pruning/config.py and every
method's ``Config``), never hand-typed, so the docs, the schema and params.yaml cannot disagree.

    python docs/gen_params.py             # from the repository root (``make docs`` runs it, then builds the site)
    python docs/gen_params.py other.md    # rewrite the table between the markers of another file

It rewrites the table between ``<!-- params:start -->`` and ``<!-- params:end -->``; tests/test_readme.py fails when
docs/params.md is stale. docs/ is not a package: tests import this file by its path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, get_args

ROOT = Path(__file__).resolve().parent.parent  # the repository root: `pruning` imports from there
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from pruning.config import Config  # noqa: E402
from pruning.methods import METHODS  # noqa: E402

PARAMS_START, PARAMS_END = "<!-- params:start -->", "<!-- params:end -->"
PARAMS_PAGE = ROOT / "docs" / "params.md"


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


def write_table(page: Path = PARAMS_PAGE) -> None:
    """Replace the text between ``page``'s params markers with :func:`params_table`."""
    text = page.read_text()
    if PARAMS_START not in text or PARAMS_END not in text:
        raise SystemExit(f"{page} has no {PARAMS_START} ... {PARAMS_END} markers")
    head, rest = text.split(PARAMS_START, 1)
    _, tail = rest.split(PARAMS_END, 1)
    page.write_text(f"{head}{PARAMS_START}\n{params_table()}{PARAMS_END}{tail}")


if __name__ == "__main__":
    write_table(Path(sys.argv[1]) if len(sys.argv) > 1 else PARAMS_PAGE)
