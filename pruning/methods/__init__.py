"""Pruning methods as plug-ins: how units are removed. One file per method, one line in :data:`METHODS`.

A method module has

- ``Config``: a :class:`pruning.schema.Section` whose first field is ``method: Literal["<name>"] = "<name>"`` (its
  name, written nowhere else) followed by the method's own params; params.yaml's ``prune`` section is a discriminated
  union of these on ``method`` (:data:`MethodConfig`);
- ``apply(model, config, ctx) -> Outcome``: prune ``model`` (the dense model's copy, free to modify) and say what was
  done: the pruned model, the edits that rebuild it from the dense architecture (:mod:`pruning.checkpoint`), one
  record per step, and the method's own facts for reports/prune.json.

The prune stage validates, looks the method up here, calls ``apply`` and writes the outcome: it names no method.
Library rules apply: a method raises in its own words and names its own Config field in ``field`` when one is the
cause (the stage turns that into the params.yaml key).
"""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from pruning.methods import channel, complexity_aware, depth, lottery, unstructured
from pruning.methods.base import Context, Outcome, step_record


def _name(module: ModuleType) -> str:
    return module.Config.model_fields["method"].default


METHODS: dict[str, ModuleType] = {_name(m): m for m in (channel, depth, unstructured, lottery, complexity_aware)}
DEFAULT = _name(channel)  # what params.yaml's prune section is when it names no method


def _method_of(raw: Any) -> str | None:
    if isinstance(raw, dict):
        return raw.get("method", DEFAULT)
    return getattr(raw, "method", None)


MethodConfig = Annotated[
    Union[tuple(Annotated[m.Config, Tag(name)] for name, m in METHODS.items())],  # noqa: UP007 - built at run time
    Discriminator(_method_of, custom_error_type="unknown_method",
                  custom_error_message=f"unknown method (valid: {', '.join(METHODS)})"),
]


def default_config() -> Any:
    return METHODS[DEFAULT].Config()


__all__ = ["METHODS", "DEFAULT", "MethodConfig", "Context", "Outcome", "step_record", "default_config"]
