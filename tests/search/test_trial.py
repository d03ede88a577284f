"""A search trial runs the pipeline's own stages from the workspace's dense model, in its own directory, and is judged
by the gates; a library refusal fails the trial, not the search."""

import hashlib
import shutil

import pytest
import yaml

from pruning.config import load_config, parse_config
from pruning.errors import DataError
from pruning.search.space import trial_config
from pruning.search.trial import TRIAL_STAGES, TrialSpec, constraints, inputs, run_trial
from pruning.stages import BY_NAME


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_trial_reads_the_dense_model_and_data_where_they_are_and_answers_to_the_gates(golden, tmp_path):
    base = load_config(golden / "params.yaml")
    assert set(inputs()) == {"train_data", "test_data", "data_meta", "dense_model", "train_report"}
    before = {key: _digest(golden / getattr(base.paths, key)) for key in inputs()}
    golden_metrics = yaml.safe_load((golden / base.paths.metrics).read_text())

    params = {"prune.ratio": 0.25, "finetune.epochs": 1}  # a quarter of the channels: short of the 2x MACs gate
    result = run_trial(TrialSpec(str(golden), trial_config(base, params), str(tmp_path / "trial-0"), 0, params))
    assert result.error is None and result.params == params
    # the workspace's dense model, not one of its own: the same dense figures as the golden run's
    assert result.metrics["dense"] == golden_metrics["dense"]
    assert 1.0 < result.metrics["macs_reduction"] < golden_metrics["macs_reduction"]
    macs = next(c for c in result.checks if c["name"] == "macs")
    assert not macs["passed"] and not result.passed
    assert constraints(result)["macs"] == pytest.approx(2.0 - result.metrics["macs_reduction"])
    assert all(constraints(result)[c["name"]] <= 0 for c in result.checks if c["passed"])
    # its own reports and params, beside links to what it read; the workspace untouched
    trial = tmp_path / "trial-0"
    for stage in TRIAL_STAGES:
        for key in BY_NAME[stage].reports:
            assert (trial / getattr(base.paths, key)).is_file(), key
    ran = parse_config(yaml.safe_load((trial / "params.yaml").read_text()))
    assert ran.prune.ratio == 0.25 and ran.finetune.epochs == 1 and not ran.tracking.enabled
    assert {key: _digest(golden / getattr(base.paths, key)) for key in inputs()} == before


def test_a_trial_the_library_refuses_is_a_failed_trial_with_its_one_line(golden, tmp_path):
    base = load_config(golden / "params.yaml")
    params = {"finetune.epochs": 0, "export.parity_atol": 0.0, "export.parity_rtol": 0.0}  # no rounding allowed
    result = run_trial(TrialSpec(str(golden), trial_config(base, params), str(tmp_path / "trial-1"), 1, params))
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith('Invalid "export.parity_atol": the dense model\'s ONNX export differs from torch')
    assert not result.passed and constraints(result) == {"trial": 1.0}


def test_a_search_without_the_dense_model_says_which_stage_to_run(golden, tmp_path):
    base = load_config(golden / "params.yaml")
    with pytest.raises(DataError, match=r"data/train\.npz not found: .* run the prepare stage first"):
        run_trial(TrialSpec(str(tmp_path / "empty"), base, str(tmp_path / "trial-2"), 2, {}))
    shutil.copytree(golden / "data", tmp_path / "prepared" / "data")
    with pytest.raises(DataError, match=r"models/dense\.pt not found: .* run the train stage first"):
        run_trial(TrialSpec(str(tmp_path / "prepared"), base, str(tmp_path / "trial-3"), 3, {}))
