"""The search space: parsed and checked against the configs its keys land in before any trial runs; sampled by Optuna
only where a trial's method has the key."""

import optuna
import pytest

from pruning.config import parse_config
from pruning.errors import ConfigError
from pruning.search.space import Range, check_space, parse_space, suggest, trial_config
from tests.conftest import TINY

BASE = parse_config(TINY)
MIXED = {"prune.method": ["channel", "depth"], "prune.ratio": {"low": 0.2, "high": 0.6},
         "prune.channel.criterion": ["l2", "taylor"], "prune.depth.criterion": ["norm"], "finetune.epochs": {"low": 1, "high": 4},
         "finetune.distill.alpha": {"low": 0.1, "high": 0.9, "step": 0.1}, "quantize.mode": ["static", "none"]}


def test_a_space_parses_into_choices_and_ranges_with_prune_method_first():
    space = parse_space({"finetune.epochs": {"low": 1, "high": 4}, "prune.method": ["depth", "channel"],
                         "prune.ratio": {"low": 0.01, "high": 0.5, "log": True}})
    assert list(space) == ["prune.method", "finetune.epochs", "prune.ratio"]
    assert space["prune.method"] == ["depth", "channel"]
    assert isinstance(space["finetune.epochs"], Range) and space["finetune.epochs"].integer
    assert not space["prune.ratio"].integer and space["prune.ratio"].log


@pytest.mark.parametrize("raw, message", [
    ({"prune.ratio": 0.3}, 'search.space."prune.ratio" in params.yaml: expected a list of choices or a range'),
    ({"prune.ratio": []}, "expected at least one choice"),
    ({"prune.ratio": [0.2, 0.2]}, "a choice is listed twice"),
    ({"prune.ratio": [[0.2]]}, 'search.space."prune.ratio"'),
    ({"prune.ratio": {"low": 0.6, "high": 0.2}}, "expected finite low <= high"),
    ({"prune.ratio": {"low": 0.0, "high": 0.5, "log": True}}, "log: true needs low > 0"),
    ({"prune.ratio": {"low": 0.1, "hi": 0.5}}, 'search.space."prune.ratio"'),
    ({"prune.ratio": list(range(101))}, "101 choices (at most 100)"),
])
def test_a_malformed_entry_is_one_line_naming_its_key(raw, message):
    with pytest.raises(ConfigError, match=None) as info:
        parse_space(raw)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("raw, message", [
    ({"prune.method": ["channel", "pruneall"]}, "'pruneall' (valid: channel, depth, unstructured, lottery, "
                                                "complexity_aware)"),
    ({"prune.bogus": [1, 2]}, "no method among ['channel'] has a param \"bogus\""),
    ({"prune.method": ["depth"], "prune.ratio": [0.3]}, "no method among ['depth'] has a param \"ratio\""),
    ({"finetune.bogus": [1]}, "params.yaml has no key finetune.bogus a trial can set"),
    ({"finetune.distill": [True]}, "finetune.distill is a section; name one of its keys"),
    ({"paths.reports": ["x"]}, "params.yaml has no key paths.reports"),
    ({"prune.ratio": {"low": 0.5, "high": 1.5}}, "1.5 is refused"),
    ({"prune.criterion": ["l2", "l7"]}, "'l7' is refused"),
    ({"finetune.epochs": {"low": -1, "high": 3}}, "-1 is refused"),
    ({"finetune.epochs": {"low": 1.0, "high": 4.0}},  # a float range on an integer param
     "is refused (Input should be a valid integer, got a number with a fractional part)"),
    ({"prune.method": ["channel", "depth"], "prune.criterion": ["l2", "norm"]},
     "'norm' is refused for method channel (Input should be 'l1', 'l2', 'taylor', 'hessian', 'bn_scale', 'lamp', "
     "'random' or 'loss_change'): give it per method, prune.channel.criterion"),
    ({"prune.depth.criterion": ["norm"]}, "method depth is not among the search's ['channel']"),
])
def test_a_key_or_value_no_trial_could_use_is_one_line_naming_it(raw, message):
    with pytest.raises(ConfigError) as info:
        check_space(parse_space(raw), BASE)
    assert message in str(info.value) and str(info.value).startswith('Invalid search.space."'), str(info.value)


def test_a_space_over_several_methods_checks_each_key_for_the_methods_that_have_it():
    check_space(parse_space(MIXED), BASE)  # ratio and criterion are channel's only: depth never samples them


def test_a_trial_of_the_base_method_keeps_its_section_and_another_starts_from_its_defaults():
    same = trial_config(BASE, {"prune.ratio": 0.25, "finetune.distill.alpha": 0.3})
    assert same.prune.method == "channel" and same.prune.ratio == 0.25
    assert same.prune.iterative_steps == BASE.prune.iterative_steps == 2  # the base section, not channel's defaults
    assert same.finetune.distill.alpha == 0.3 and same.finetune.epochs == BASE.finetune.epochs
    other = trial_config(BASE, {"prune.method": "depth", "prune.ratio": 0.25})  # ratio: not depth's, not set
    assert other.prune.method == "depth" and other.prune == type(other.prune)()
    assert BASE.prune.ratio == 0.5  # the base is untouched


def test_optuna_samples_only_the_keys_the_trial_s_method_has_within_their_ranges():
    space = parse_space(MIXED)
    check_space(space, BASE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(24):
        trial = study.ask()
        params = suggest(trial, space, BASE)
        cfg = trial_config(BASE, params)
        seen.add(cfg.prune.method)
        assert set(trial.params) == set(params)
        assert ("prune.ratio" in params) == (cfg.prune.method == "channel")
        if cfg.prune.method == "channel":
            assert 0.2 <= cfg.prune.ratio <= 0.6 and cfg.prune.criterion in ("l2", "taylor")
        else:
            assert cfg.prune.criterion == "norm" and "prune.channel.criterion" not in params
        assert 1 <= cfg.finetune.epochs <= 4 and isinstance(params["finetune.epochs"], int)
        assert round(cfg.finetune.distill.alpha * 10, 6) == round(cfg.finetune.distill.alpha * 10)  # step 0.1
        study.tell(trial, 0.0)
    assert seen == {"channel", "depth"}
