"""The search space of ``python -m pruning search`` (params.yaml ``search.space``): dotted params keys mapped to the
values a trial may take, validated against the configs they land in before any trial runs.

    search:
      space:
        prune.method: [channel, depth]               # a list: the choices
        prune.ratio: {low: 0.2, high: 0.6}           # a range: floats (log: true for a log scale) ...
        finetune.epochs: {low: 1, high: 6, step: 1}  # ... or integers when low, high (and step) are

A key under ``prune.`` is conditional on the method: it is sampled only in trials whose method's Config has that field
(``prune.ratio`` for channel, not for depth), and a space that names ``prune.method`` may mix methods. A field two
methods share with different values (``criterion``: l2 ... for channel, norm / loss_change for depth) is given per
method: ``prune.channel.criterion: [l2, taylor]``, ``prune.depth.criterion: [norm, loss_change]``.
A trial whose method is the base params.yaml's starts from its ``prune`` section; another method starts from that
method's defaults. Every other key must name a leaf of params.yaml (``finetune.distill.alpha``); a section, an unknown
key or a value its field refuses is a one-line error naming ``search.space."<key>"``.

Optuna samples the space (:func:`suggest`: define-by-run, so conditional keys are just not asked for); a trial's params
(:func:`trial_config`) are the base params with the sampled values put in, validated like params.yaml.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from pruning.errors import ConfigError
from pruning.methods import METHODS
from pruning.schema import Section

if TYPE_CHECKING:
    import optuna

    from pruning.config import Config

Scalar = str | int | float | bool | None
MAX_CHOICES = 100  # a list longer than this is a range written out: say it as one


class Range(Section):
    """``{low, high, step, log}``: integers when low, high and step are integers, else floats."""

    low: float | int = Field(description="smallest value")
    high: float | int = Field(description="largest value")
    step: float | int | None = Field(None, gt=0, description="spacing of the values (none: continuous floats, or "
                                     "every integer)")
    log: bool = Field(False, description="sample on a log scale (low > 0; not with step)")

    @model_validator(mode="after")
    def _order(self) -> Range:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"expected finite low <= high, got low={self.low}, high={self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: true needs low > 0 and no step")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))

    def samples(self) -> list[float | int]:
        """Values that stand for the range when it is checked: its ends, and for a float range one value between
        them that is no integer (a float range on an integer param is refused before any trial, not in one)."""
        if self.integer or self.low == self.high:
            return [self.low, self.high]
        return [self.low, self.high, self.low + (self.high - self.low) * 0.6180339887498949]  # (√5 - 1) / 2


Choices = list[Scalar]
Values = Choices | Range
_CHOICES = TypeAdapter(Choices)


def _check_choices(values: Choices) -> Choices:
    if not values:
        raise ValueError("expected at least one choice, got an empty list")
    if len(values) > MAX_CHOICES:
        raise ValueError(f"{len(values)} choices (at most {MAX_CHOICES}): write a range {{low, high, step}}")
    if len({repr(v) for v in values}) != len(values):
        raise ValueError(f"a choice is listed twice: {values}")
    return values


def parse_space(raw: Mapping[str, Any]) -> dict[str, Values]:
    """params.yaml's ``search.space`` mapping as typed entries, in the order written (Optuna asks in that order;
    prune.method first); a malformed entry is a ConfigError naming its key."""
    out: dict[str, Values] = {}
    for key, value in raw.items():
        where = f'search.space."{key}"'
        try:
            if isinstance(value, list):
                out[key] = _check_choices(_CHOICES.validate_python(value, strict=True))
            elif isinstance(value, Mapping):
                out[key] = Range.model_validate(value)
            else:
                raise ValueError(f"expected a list of choices or a range {{low, high}}, got {value!r}")
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"Invalid {where} in params.yaml: {err['msg'].removeprefix('Value error, ')}") from None
        except ValueError as exc:
            raise ConfigError(f"Invalid {where} in params.yaml: {exc}") from None
    if "prune.method" in out:  # sampled first: the other prune keys depend on it
        out = {"prune.method": out["prune.method"], **{k: v for k, v in out.items() if k != "prune.method"}}
    return out


def read_space(cfg: Config) -> dict[str, Values]:
    """params.yaml's search.space, parsed and checked (:func:`parse_space`, :func:`check_space`); an empty one is an
    error too: a search must be told what it may change."""
    if not cfg.search.space:
        raise ConfigError("search.space in params.yaml is empty: name the params a search may change, e.g. "
                          "prune.ratio: {low: 0.2, high: 0.7} (docs/search.md)")
    space = parse_space(cfg.search.space)
    check_space(space, cfg)
    return space


def methods_of(space: Mapping[str, Values], base: Config) -> list[str]:
    """The methods trials may use: prune.method's choices, else the base params' method."""
    choices = space.get("prune.method")
    if choices is None:
        return [base.prune.method]
    if isinstance(choices, Range):
        raise ConfigError('Invalid search.space."prune.method" in params.yaml: expected a list of methods, got a range')
    unknown = [m for m in choices if m not in METHODS]
    if unknown:
        raise ConfigError(f'Invalid search.space."prune.method" in params.yaml: {unknown[0]!r} (valid: '
                          f'{", ".join(METHODS)})')
    return [str(m) for m in choices]


def _prune_section(base: Config, method: str) -> dict[str, Any]:
    if method == base.prune.method:
        return base.prune.model_dump()
    return METHODS[method].Config().model_dump()


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree[part]
    tree[path[-1]] = value


def _leaf(model: type[BaseModel], path: list[str]) -> bool | None:
    """True: ``path`` names a field of ``model`` that is not a section; False: a section; None: no such field."""
    field = model.model_fields.get(path[0])
    if field is None:
        return None
    annotation = field.annotation
    is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    if len(path) == 1:
        return not is_section
    if not is_section:
        return None
    return _leaf(annotation, path[1:])  # type: ignore[arg-type]


def _prune_field(key: str) -> tuple[str | None, str]:
    """``prune.<field>`` -> (None, field); ``prune.<method>.<field>`` -> (method, field)."""
    parts = key.split(".")
    if len(parts) == 3 and parts[1] in METHODS:
        return parts[1], parts[2]
    return None, ".".join(parts[1:])


def prune_key(key: str) -> list[str]:
    """Where a search key lands in params.yaml: ``prune.<method>.<field>`` and ``prune.<field>`` in ``prune.<field>``,
    every other key where it says."""
    return ["prune", _prune_field(key)[1]] if key.startswith("prune.") else key.split(".")


def applies(key: str, method: str) -> bool:
    """Whether a trial of ``method`` samples ``key`` (only prune.* keys are conditional)."""
    if not key.startswith("prune."):
        return True
    only, field = _prune_field(key)
    return only in (None, method) and field in METHODS[method].Config.model_fields


def check_space(space: Mapping[str, Values], base: Config) -> None:
    """Every key names a leaf the trials can set and every value (each choice, both ends of a range) is one its field
    accepts, for every method the key applies to. Raises ConfigError naming ``search.space."<key>"``."""
    from pruning.config import Config

    methods = methods_of(space, base)
    for key, values in space.items():
        where = f'search.space."{key}"'
        path = key.split(".")
        if key == "prune.method":
            continue
        if path[0] == "prune":
            only, field = _prune_field(key)
            if only is not None and only not in methods:
                raise ConfigError(f"Invalid {where} in params.yaml: method {only} is not among the search's {methods}")
            users = [m for m in methods if applies(key, m)]
            if not users:
                raise ConfigError(f"Invalid {where} in params.yaml: no method among {methods} has a param "
                                  f'"{field}"')
        else:
            leaf = _leaf(Config, path)
            if leaf is None or path[0] in ("paths", "search"):
                raise ConfigError(f"Invalid {where} in params.yaml: params.yaml has no key {key} a trial can set")
            if leaf is False:
                raise ConfigError(f"Invalid {where} in params.yaml: {key} is a section; name one of its keys")
            users = [methods[0]]
        samples = values.samples() if isinstance(values, Range) else values
        for method in users:
            for value in samples:
                try:
                    trial_config(base, {**({"prune.method": method} if path[0] == "prune" else {}), key: value})
                except ConfigError as exc:
                    reason = str(exc).split(": ", 1)[-1]
                    if reason.startswith(f"{value!r} (") and reason.endswith(")"):
                        reason = reason[len(repr(value)) + 2:-1]
                    per_method = (f" for method {method} ({reason}): give it per method, "
                                  f"prune.{method}.{path[-1]}") if len(users) > 1 else f" ({reason})"
                    raise ConfigError(f"Invalid {where} in params.yaml: {value!r} is refused{per_method}") from None


def trial_config(base: Config, params: Mapping[str, Any]) -> Config:
    """The base params with a trial's sampled ``params`` (dotted keys) put in, validated as params.yaml is."""
    from pruning.config import validate

    tree = base.model_dump(mode="python")
    tree["search"]["space"] = {}  # a trial searches nothing: its params.yaml is one pipeline's (and not rechecked)
    method = params.get("prune.method", base.prune.method)
    tree["prune"] = _prune_section(base, str(method))
    for key, value in params.items():
        if key != "prune.method" and applies(key, str(method)):
            _set(tree, prune_key(key), value)
    return validate(tree, "the trial's params")


def suggest(trial: optuna.Trial, space: Mapping[str, Values], base: Config) -> dict[str, Any]:
    """Sample one trial's values with Optuna, asking only for the keys its method has."""
    params: dict[str, Any] = {}
    method = base.prune.method
    for key, values in space.items():
        if not applies(key, str(params.get("prune.method", method))):
            continue
        if isinstance(values, Range):
            if values.integer:
                params[key] = trial.suggest_int(key, int(values.low), int(values.high), step=int(values.step or 1),
                                                log=values.log)
            else:
                params[key] = trial.suggest_float(key, float(values.low), float(values.high), step=values.step,
                                                  log=values.log)
        else:
            params[key] = trial.suggest_categorical(key, values)  # type: ignore[arg-type]
    return params
