"""Every list a user reads is checked against the registry it describes: the choices params.yaml's comments and the
params reference (the config fields' descriptions) spell out, the benchmarks the command line lists, the counts the
docs give. A new method, architecture, source or benchmark that a list forgets fails here."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from bench import BENCHMARKS
from pruning import criteria
from pruning.config import Config
from pruning.data import BUILT_IN
from pruning.hf import HF
from pruning.methods import METHODS
from pruning.stages import STAGES
from pruning.task import LOSSES, METRICS
from pruning.zoo import ZOO
from tests.conftest import REPO

CALLABLE = "package.module:callable"
# keys whose choices come from a registry (the rest are Literal fields: their choices are the schema's), and whether
# a user's module:callable is one more choice
REGISTRIES: dict[str, tuple[tuple[Any, ...], bool]] = {
    "data.source": (BUILT_IN, True), "model.arch": ((*ZOO, HF), True), "task.loss": (tuple(LOSSES), True),
    "task.metric": (tuple(METRICS), True), "prune": (tuple(METHODS), False),
    "prune.criterion": (tuple(criteria.CRITERIA), False),
}


def _literals(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[Any, ...]]:
    """Every Literal-typed field of the config (the default method's section for ``prune``), by dotted key."""
    out = {}
    for name, field in model.model_fields.items():
        sub = [a for a in (field.annotation, *typing.get_args(field.annotation))
               if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub and name != "gates":
            out |= _literals(sub[0], f"{prefix}{name}.")
        elif typing.get_origin(field.annotation) is typing.Literal and name != "method":
            out[f"{prefix}{name}"] = typing.get_args(field.annotation)
    return out


def _choices() -> dict[str, tuple[tuple[Any, ...], bool]]:
    found = {key: (values, False) for key, values in _literals(Config).items()}
    found |= {f"prune.{k}": (v, False) for k, v in _literals(METHODS["channel"].Config).items()}
    return {**found, **REGISTRIES}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_s_params_reference_names_every_choice_of_its_keys(method):
    """params.yaml holds the default method's section; the params reference describes every method's keys."""
    for key, values in _literals(METHODS[method].Config).items():
        text = METHODS[method].Config.model_fields[key].description or ""
        missing = [str(v) for v in values if not re.search(rf"(?<![\w.]){re.escape(str(v))}(?![\w])", text)]
        assert not missing and _alternatives(text) == len(values), f"prune.{key} of {method}: {text!r}"


def _comments() -> dict[str, str]:
    """params.yaml's comment of each key (with the comment-only lines that continue it), by dotted key."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in (REPO / "params.yaml").read_text().splitlines():
        if m := re.match(r"^( *)([\w]+):(.*)$", line):
            indent, key, rest = len(m[1]), m[2], m[3]
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
            last = ".".join(k for _, k in stack)
            out[last] = rest.split("#", 1)[1].strip() if "#" in rest else ""
        elif line.strip().startswith("#") and last and line.startswith(" " * 20):
            out[last] += " " + line.strip().lstrip("#").strip()
    return out


def _alternatives(text: str) -> int:
    return text.count(" | ") + 1


@pytest.mark.parametrize("key", sorted(_choices()))
def test_params_yaml_and_the_params_reference_name_every_choice_of_a_key(key):
    values, user_callable = _choices()[key]
    comment = _comments()[key]
    names = [str(v) for v in values]
    for text, where in ((comment, "params.yaml's comment"), (_description(key), "the params reference")):
        if not text and where == "the params reference":
            continue  # a section (prune) has no description: its methods have theirs
        missing = [n for n in names if not re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", text)]
        assert not missing, f"{where} of {key} does not name {missing}: {text!r}"
        assert _alternatives(text) == len(names) + user_callable, f"{where} of {key} lists other choices: {text!r}"
        assert not user_callable or CALLABLE in text, f"{where} of {key} does not say {CALLABLE}"


def _description(key: str) -> str:
    model: Any = Config
    parts = key.split(".")
    if parts[0] == "prune":
        if len(parts) == 1:
            return ""
        model, parts = METHODS["channel"].Config, parts[1:]
    for part in parts[:-1]:
        model = model.model_fields[part].annotation
    return model.model_fields[parts[-1]].description or ""


def test_the_benchmarks_are_the_modules_of_bench_that_run_as_a_command_and_the_cli_lists_them():
    runnable = {p.stem for p in (REPO / "bench").glob("*.py")
                if '__name__ == "__main__"' in p.read_text() and p.stem != "config"}
    assert set(BENCHMARKS) == runnable
    listed = subprocess.run([sys.executable, "-m", "pruning", "bench", "list"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    assert [line.split()[0] for line in listed.splitlines()] == list(BENCHMARKS)


NUMBERS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                       "ten", "eleven", "twelve"])}
COUNTED = {"methods": len(METHODS), "criteria": len(criteria.CRITERIA), "stages": len(STAGES)}


def _docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_the_prune_verb_s_help_names_every_method_and_the_default():
    from pruning.methods import DEFAULT

    text = next(s for s in STAGES if s.name == "prune").help
    assert {m for m in METHODS if re.search(rf"\b{m}\b", text)} == set(METHODS)
    assert f"{DEFAULT} (the default)" in text


def test_the_docs_count_methods_criteria_and_stages_as_their_registries_do():
    pattern = re.compile(rf"\b({'|'.join(NUMBERS)}|\d+) (?:pruning )?({'|'.join(COUNTED)})\b", re.I)
    wrong = [(path.relative_to(REPO).as_posix(), m[0]) for path in _docs() for m in pattern.finditer(path.read_text())
             if NUMBERS.get(m[1].lower(), int(m[1]) if m[1].isdigit() else -1) != COUNTED[m[2].lower()]]
    assert not wrong, wrong


def test_the_docs_name_only_files_that_exist():
    """A path of the repository in the docs (`pruning/...py`, `tests/...py`, `bench/...py`) is a file there."""
    pattern = re.compile(r"`((?:pruning|tests|bench|flows|docs)/[\w/.-]+\.(?:py|md|yaml))`")
    missing = [(path.relative_to(REPO).as_posix(), m[1]) for path in [*_docs(), REPO / "params.yaml"]
               for m in pattern.finditer(path.read_text()) if not (REPO / m[1]).exists()]
    assert not missing, missing
