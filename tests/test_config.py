from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pruning.config import load_config, parse_config
from pruning.errors import ConfigError
from tests.conftest import REPO, TINY, merge


def test_load_config_accepts_the_shipped_params_yaml():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.source == "digits"
    assert 0 < cfg.prune.ratio < 1
    assert {"accuracy", "macs", "min_speedup", "parity", "int8_accuracy"} <= cfg.gates.keys()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"prune": {"ratioo": 0.5}}, 'Unknown key "prune.ratioo" in params.yaml'),
        ({"prune": {"ratio": 1.2}}, 'Invalid "prune.ratio" in params.yaml: 1.2'),
        ({"prune": {"ratio": 0.0}}, 'Invalid "prune.ratio"'),
        ({"train": {"epochs": "many"}}, 'Invalid "train.epochs" in params.yaml'),
        ({"prune": {"criterion": "magic"}}, 'Invalid "prune.criterion"'),
        ({"prune": {"target_macs_reduction": 2.0}}, "set exactly one of prune.ratio and prune.target_macs_reduction"),
        ({"gates": {"g": {"metric": "nope", "op": "<=", "threshold": 1}}}, "unknown metric 'nope'"),
        ({"surprise": 1}, 'Unknown key "surprise"'),
    ],
)
def test_parse_config_names_the_key_when_the_value_is_bad(override, needle):
    with pytest.raises(ConfigError) as exc:
        parse_config(merge(TINY, override), "params.yaml")
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_parse_config_accepts_a_macs_target_when_ratio_is_null():
    cfg = parse_config(merge(TINY, {"prune": {"ratio": None, "target_macs_reduction": 2.5}}))
    assert cfg.prune.ratio is None and cfg.prune.target_macs_reduction == 2.5


def test_parse_config_rejects_npz_source_when_the_file_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r'"data.path".*missing.npz not found'):
        parse_config(merge(TINY, {"data": {"source": "npz", "path": str(tmp_path / "missing.npz")}}))


def test_parse_config_rejects_a_user_model_when_it_cannot_be_imported():
    with pytest.raises(ConfigError, match=r'"model.arch".*cannot import module \'no_such_module_xyz\''):
        parse_config(merge(TINY, {"model": {"arch": "no_such_module_xyz:build"}}))


def test_parse_config_rejects_a_user_model_when_the_attribute_is_missing():
    with pytest.raises(ConfigError, match=r"has no attribute 'nope'"):
        parse_config(merge(TINY, {"model": {"arch": "pruning.zoo:nope"}}))


def test_load_config_reports_the_line_when_yaml_is_broken(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("prune:\n  ratio: [0.5\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)


def test_config_is_frozen():
    cfg = parse_config(TINY)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.prune.ratio = 0.9  # type: ignore[misc]


def test_params_yaml_and_schema_defaults_name_the_same_sections():
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    from pruning.config import Config

    assert set(shipped) == set(Config.model_fields)
