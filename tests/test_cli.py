import os
import subprocess
import sys

import pytest

from pruning.stages import STAGES
from tests.conftest import write_params

VERBS = [s.name for s in STAGES]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pruning", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def test_help_lists_one_verb_per_stage_with_its_line_from_the_table(tmp_path):
    out = _cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for stage in STAGES:
        assert f"│ {stage.name} " in out.stdout and stage.help[:40] in out.stdout
    assert "--strict" in _cli("evaluate", "--help", cwd=tmp_path).stdout
    assert "--strict" not in _cli("train", "--help", cwd=tmp_path).stdout


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"prune": {"ratio": 1.5}}, 'Invalid "prune.ratio" in params.yaml: 1.5'),
        ({"prune": {"ratoi": 0.5}}, 'Unknown key "prune.ratoi" in params.yaml'),
        ({"data": {"source": "npz", "path": "nowhere.npz"}}, 'Invalid "data.path" in params.yaml'),
        ({"model": {"arch": "not_a_module:make"}}, 'Invalid "model.arch" in params.yaml'),
        ({"prune": {"method": "lottery", "ratio": 0.5}}, 'Unknown key "prune.ratio" in params.yaml'),
    ],
)
def test_every_verb_exits_2_with_one_line_and_writes_nothing_when_params_are_bad(tmp_path, override, needle):
    write_params(tmp_path, override)
    before = sorted(p.name for p in tmp_path.iterdir())
    for verb in ("prepare", "train", "prune"):
        out = _cli(verb, cwd=tmp_path)
        assert out.returncode == 2
        assert needle in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr + out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_stage_names_the_missing_input_when_run_out_of_order(tmp_path):
    write_params(tmp_path)
    out = _cli("prune", cwd=tmp_path)
    assert out.returncode == 2
    assert "data/meta.json not found: run the prepare stage first" in out.stderr


def test_a_missing_params_file_is_a_one_line_error(tmp_path):
    out = _cli("train", "--params", "nope.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "Parameters file nope.yaml not found" in out.stderr


def test_a_library_error_is_reported_with_the_params_key_it_comes_from(trained_copy):
    write_params(trained_copy, {"prune": {"ignored_layers": ["layers.99"]}})
    out = _cli("prune", cwd=trained_copy)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert 'Invalid "prune.ignored_layers": no layer named \'layers.99\' in the model' in out.stderr


def test_bench_runs_a_benchmark_of_bench_and_names_an_unknown_one(tmp_path):
    out = _cli("bench", "nothing_here", cwd=tmp_path)
    assert out.returncode == 2 and "no benchmark 'nothing_here'" in out.stderr
    from tests.conftest import REPO

    out = _cli("bench", "criteria", "--help", cwd=REPO)
    assert out.returncode == 0 and "--quick" in out.stdout
