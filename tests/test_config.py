import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pruning.config import load_config, parse_config
from pruning.errors import ConfigError
from tests.conftest import REPO, TINY, merge, write_params


def test_load_config_accepts_the_shipped_params_yaml():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.source == "digits"
    assert 0 < cfg.prune.ratio < 1
    assert {"accuracy", "macs", "min_speedup", "parity", "shipped_accuracy", "shipped_speedup"} <= cfg.gates.keys()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"prune": {"ratioo": 0.5}}, 'Unknown key "prune.ratioo" in params.yaml'),
        ({"prune": {"ratio": 1.2}}, 'Invalid "prune.ratio" in params.yaml: 1.2'),
        ({"prune": {"ratio": 0.0}}, 'Invalid "prune.ratio"'),
        ({"train": {"epochs": "many"}}, 'Invalid "train.epochs" in params.yaml'),
        ({"prune": {"criterion": "magic"}}, 'Invalid "prune.criterion"'),
        ({"prune": {"target_macs_reduction": 2.0}},
         'Invalid "prune" in params.yaml: set exactly one of ratio and target_macs_reduction'),
        ({"prune": {"method": "pixie"}}, 'Invalid "prune.method" in params.yaml: \'pixie\' (unknown method (valid: '
                                         'channel, depth, unstructured, lottery, complexity_aware))'),
        ({"prune": {"method": "unstructured", "sparsity": 1.5}}, 'Invalid "prune.sparsity" in params.yaml: 1.5'),
        ({"prune": {"method": "lottery", "rounds": 2, "epochs": 2, "rewind_epoch": 2}},
         'Invalid "prune" in params.yaml: rewind_epoch 2 must be below epochs (2)'),
        ({"device": "tpu"}, 'Invalid "device" in params.yaml: \'tpu\''),
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
        parse_config(merge(TINY, {"data": {"source": "npz", "path": "no/missing.npz"}}))


def test_parse_config_rejects_a_user_model_when_it_cannot_be_imported():
    with pytest.raises(ConfigError, match=r'Invalid "model.arch" in params.yaml: cannot import module \'no_such_module_xyz\''):
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


# what params.yaml ships on purpose instead of the schema's neutral default (a default kwargs only fits one arch; the
# gates, the registry name and the search space belong to this pipeline: a space fits one method's params)
SHIPPED_CHOICES = {"model.kwargs", "gates", "registry.model_name", "bench", "paths", "search.space"}


def test_the_schema_defaults_are_the_values_params_yaml_ships():
    """One source of defaults: the config models' defaults are params.yaml's values (and the params reference,
    docs/params.md, shows them)."""
    from pruning.config import Config
    from pruning.tracking import flatten

    shipped = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    defaults = flatten(Config.model_construct().model_dump(mode="json", exclude={"paths"}) | {
        "prune": Config.model_fields["prune"].default_factory().model_dump(mode="json")})
    differ = {k for k in shipped.keys() | defaults.keys()
              if not any(k == c or k.startswith(c + ".") for c in SHIPPED_CHOICES) and shipped.get(k) != defaults.get(k)}
    assert not differ, {k: (shipped.get(k), defaults.get(k)) for k in sorted(differ)}


@pytest.mark.parametrize("over, match", [
    ({"train": {"epochs": 0}}, r'Invalid "train.epochs" in .*: 0 \(no training\) needs the trained weights in '
                               r'"model.weights"'),
    ({"model": {"weights": "elsewhere/w.pt"}}, r'Invalid "model.weights" in .*: \'elsewhere/w.pt\' is not inside '
                                               r"paths.weights_dir \(weights/\)"),
    ({"model": {"weights": "weights/../../w.pt"}}, r'Invalid "model.weights"'),
    ({"model": {"weights": "weights/w.txt"}}, r"is not a weights file"),
    ({"model": {"weights": "weights/absent.pt"}}, r"weights file weights/absent.pt not found"),
])
def test_model_weights_must_be_a_file_inside_the_tracked_weights_directory(in_tmp, over, match):
    (in_tmp / "weights").mkdir()
    (in_tmp / "weights" / "w.txt").write_text("x")
    with pytest.raises(ConfigError, match=match):
        load_config(write_params(in_tmp, over))


@pytest.mark.parametrize("key, value, match", [
    ("test_data", "/etc/passwd", "must be relative to the workspace"),
    ("test_data", "~/train.npz", "must be relative to the workspace"),
    ("dense_model", "../elsewhere.pt", "must stay inside the workspace"),
    ("metrics", "params.yaml", "must not be .git, .dvc, pruning"),
    ("gates", ".git/HEAD", "must not be .git"),
    ("prune_report", "pruning/config.py", "must not be"),
    ("test_data", "data/train.npz", "paths.test_data and paths.train_data are both 'data/train.npz'"),
    ("metrics", "weights/metrics.json", "lies in paths.weights_dir"),
    ("data_meta", "", "empty"),
    ("data_meta", "x" * 300, "too long"),
    ("data_meta", "data/train.npz/meta.json", "paths.data_meta 'data/train.npz/meta.json' lies inside paths.train_data"),
])
def test_every_configured_path_stays_inside_the_workspace_and_is_its_own(key, value, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(merge(TINY, {"paths": {key: value}}))


def test_data_path_stays_inside_the_workspace_too():
    with pytest.raises(ConfigError, match=r'Invalid "data.path" in params.yaml: \'../x.npz\' must stay inside'):
        parse_config(merge(TINY, {"data": {"source": "npz", "path": "../x.npz"}}))


@pytest.mark.parametrize("content, match", [
    (b"seed: 1\nseed: 2\n", r"line 2 is not valid YAML: duplicate key 'seed'"),
    ("seed: 1\n".encode("utf-16"), r"is not UTF-8 text \(byte 0\)"),
    (("a: " + "[" * 5000 + "]" * 5000 + "\n").encode(), r"nests too deeply"),
    # block nesting, on one line and by indentation: the pure-Python loader's RecursionError, not libyaml's crash
    (("a:\n  " + "- " * 5000 + "x\n").encode(), r"nests too deeply"),
    (("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3000))).encode(), r"nests too deeply"),
    (("seed: " + "1" * 5000 + "\n").encode(), r"holds a value that cannot be read \(Exceeds the limit"),
])
def test_params_files_that_cannot_be_read_are_one_line_not_a_traceback(tmp_path, content, match):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("over, match", [
    ({"export": {"parity_atol": float("inf")}}, r'Invalid "export.parity_atol" .*: inf \(Input should be a finite number'),
    ({"gates": {"macs": {"threshold": float("nan")}}}, r'Invalid "gates.macs.threshold" .*finite number'),
    ({"train": {"epochs": 1e30}}, r'Invalid "train.epochs"'),
    ({"train": {"lr": float("inf")}}, r'Invalid "train.lr"'),
    ({"prune": {"round_to": 10 ** 12}}, r'Invalid "prune.round_to" .*less than or equal to 4096'),
    ({"evaluate": {"threads": 10 ** 6}}, r'Invalid "evaluate.threads" .*less than or equal to 256'),
    ({"data": {"source": "mnist1d", "mnist1d_samples": 10 ** 9}}, r'Invalid "data.mnist1d_samples"'),
    ({"gates": {"macs": {"threshold": 1e300}}}, r'Invalid "gates.macs.threshold" .*out of range: numbers in params.yaml '
                                                r"stay within ±1e\+09"),
    ({"seed": -1}, r'Invalid "seed" .*: -1 \(Input should be greater than or equal to 0\)'),
    ({"seed": 2 ** 32}, r'Invalid "seed"'),
    ({"schedule": {"cron": "61 3 * * *"}}, r'Invalid "schedule" .*cron \'61 3 \* \* \*\': Bad minute'),
    ({"schedule": {"timezone": "Mars/Olympus"}}, r"timezone 'Mars/Olympus' is not an IANA time zone"),
    ({"schedule": {"search_cron": "0 3 * *"}}, r'Invalid "schedule" .*search_cron: expected 5 cron fields'),
    ({"model": {"arch": "os:system"}}, r'Invalid "model.arch" .*builtin_function_or_method, not a Python function'),
    ({"model": {"arch": "sys:exit"}}, r'Invalid "model.arch"'),
    ({"model": {"arch": "collections:OrderedDict"}}, r"is the class OrderedDict, not a torch.nn.Module class"),
])
def test_values_that_would_change_meaning_or_run_forever_are_refused_in_one_line(over, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(merge(TINY, over))
    assert "\n" not in str(err.value)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]  # 10**9 values
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(TINY) + "bench:\n" + "".join(f"  {ln}\n" for ln in levels))
    with pytest.raises(ConfigError, match=r"expands to more than 20000 values once its YAML aliases are followed"):
        load_config(path)


def test_a_key_dvc_yaml_tracks_must_be_in_params_yaml(tmp_path):
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    params = {k: v for k, v in TINY.items() if k != "gates"}  # the schema defaults it; DVC would fail mid-run
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r'Missing key "gates" in .*params.yaml: dvc.yaml\'s evaluate stage tracks it'):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "other").mkdir()  # without a dvc.yaml beside it, nothing to agree with
    (tmp_path / "other" / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_config(tmp_path / "other" / "params.yaml").gates == {}


def test_a_builder_that_fails_or_exits_is_one_error_not_a_silent_exit():
    from pruning.errors import ModelError
    from pruning.zoo import build_model

    with pytest.raises(ModelError, match=r"'tests.test_config:_exits' failed to build the model: SystemExit: 0"):
        build_model("tests.test_config:_exits", {}, (1, 8, 8), 10)
    with pytest.raises(ModelError, match=r"failed to build the model: RuntimeError: no GPU"):
        build_model("tests.test_config:_raises", {}, (1, 8, 8), 10)


def _exits():
    raise SystemExit(0)


def _raises():
    raise RuntimeError("no GPU")


# names MLflow's registry takes and refuses (quotes and spaces are fine; '/', ':', '%', '.', '..x' and blanks are not)
MODEL_NAMES = ["pruned-int8", "a'b", 'a"b', "a b", " a", "a\\b", "a@b", "é-ünï", "a.b", "..", "..x", ".", "x..",
               "a/b", "/a", "a:b", "a%b", "", "  ", "\t", "a" * 256, "a" * 257]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_model_name_follows_mlflow_s_own_rule(name):
    """Our copy of the rule (params.yaml loads without importing mlflow) against MLflow's functions: the tracking
    stores' rule and the file store's stricter one (also '%'), plus the registry column's 256 characters."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.model_registry.file_store import _validate_model_name as file_store_rule
    from mlflow.utils.validation import _validate_model_name as mlflow_rule

    from pruning.config import MAX_MODEL_NAME, model_name_problem

    def accepted(rule):
        try:
            rule(name)
        except MlflowException:
            return False
        return True

    mlflow_accepts = accepted(mlflow_rule) and accepted(file_store_rule) and len(name) <= MAX_MODEL_NAME
    assert (model_name_problem(name) is None) == mlflow_accepts


@pytest.mark.parametrize(("name", "reason"), [
    ("a/b", "a registered model's name cannot contain '/'"),
    ("team:model", "a registered model's name cannot contain ':'"),
    ("..x", "MLflow treats names as paths: a name cannot be '.' or start with '..'"),
])
def test_a_model_name_mlflow_refuses_is_an_error_when_params_yaml_loads(name, reason):
    with pytest.raises(ConfigError) as exc:
        parse_config(merge(TINY, {"registry": {"model_name": name}}))
    assert str(exc.value) == f'Invalid "registry.model_name" in params.yaml: {name!r} ({reason})'


@pytest.mark.parametrize(("source", "make", "reason"), [
    ("npz", "fifo", "data file in.npz is a named pipe (FIFO), not a regular file"),
    ("npz", "dir", "data file in.npz is a directory, not a regular file"),
    ("imagefolder", "file", "image folder in.npz is a regular file, not a directory"),
    ("tests.userpkg:datasets", "fifo", "data path in.npz is a named pipe (FIFO), not a regular file or a directory"),
    ("npz", None, "data file in.npz not found"),
])
def test_a_data_path_that_is_not_a_file_of_the_kind_asked_says_what_it_is(in_tmp, source, make, reason):
    """A FIFO was reported "not found" (and opening one would block the stage)."""
    import os

    if make == "fifo":
        os.mkfifo(in_tmp / "in.npz")
    elif make == "dir":
        (in_tmp / "in.npz").mkdir()
    elif make == "file":
        (in_tmp / "in.npz").write_bytes(b"")
    with pytest.raises(ConfigError) as exc:
        load_config(write_params(in_tmp, {"data": {"source": source, "path": "in.npz"}}))
    assert str(exc.value) == f'Invalid "data.path" in {in_tmp / "params.yaml"}: {reason}'


ONLY = "params hold text, numbers, booleans, null, lists and mappings only (DVC hashes them as JSON)"


@pytest.mark.parametrize(("at", "value", "key", "reason"), [
    ("source", "!!binary ZGlnaXRz", "data.source", f"a !!binary value (bytes): {ONLY}"),
    ("source", "2026-01-31", "data.source", "a date or time (YAML reads an unquoted 2026-01-31 as one): quote it to "
                                            "keep it text"),
    ("kwargs", "{a: !!set {x, y}}", "data.kwargs.a", f"a !!set: {ONLY}"),
    ("kwargs", "{a: [1, !!omap [x: 1]]}", "data.kwargs.a[1]", f"an !!omap: {ONLY}"),
])
def test_a_yaml_value_dvc_cannot_hash_is_refused_naming_the_key_and_line(tmp_path, at, value, key, reason):
    """!!binary text passed the schema (bytes become str) and failed in DVC's params hash, in the middle of a run."""
    params = write_params(tmp_path, {"data": {at: "PLACEHOLDER"}})
    text = params.read_text().replace("PLACEHOLDER", value)
    params.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if value in ln)
    with pytest.raises(ConfigError) as exc:
        load_config(params)
    assert str(exc.value) == f'Invalid "{key}" in {params} (line {line}): {reason}'
