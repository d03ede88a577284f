"""The user's own data through every stage: a folder of images (no code), and a two-input model fed by the user's
Dataset. Streamed: the stages read the samples through DataLoaders, never as one tensor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from pruning.config import load_config
from pruning.stages import STAGES
from tests import userpkg
from tests.conftest import write_params


@pytest.fixture
def fresh_userpkg(monkeypatch, in_tmp):
    """``userpkg`` importable from this test's workspace only (not a copy an earlier test imported)."""
    monkeypatch.syspath_prepend(str(in_tmp))
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        monkeypatch.delitem(sys.modules, name)
    yield in_tmp
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        del sys.modules[name]


def _images(root: Path, per_class: int = 16) -> None:
    """Three classes of 8x8 RGB PNGs: the class's own colour channel is the bright one."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 80, (8, 8, 3), dtype=np.uint8)
            img[..., c] += 150
            Image.fromarray(img).save(root / name / f"{i:03d}.png")


def test_a_folder_of_images_goes_through_the_whole_pipeline(in_tmp):
    _images(in_tmp / "images")
    cfg = load_config(write_params(in_tmp, {"data": {"source": "imagefolder", "path": "images", "test_fraction": 0.25,
                                                     "mean": [0.5], "std": [0.25]},
                                            "train": {"epochs": 6, "batch_size": 8}}))
    for stage in STAGES:
        stage.fn(cfg, in_tmp)
    meta = json.loads(Path(cfg.paths.data_meta).read_text())
    assert meta["streamed"] and meta["classes"] == ["cat", "dog", "fox"] and meta["input_shape"] == [3, 8, 8]
    assert (meta["n_train"], meta["n_test"]) == (36, 12)
    with np.load(cfg.paths.test_data) as f:  # indices into the folder, not a copy of the images
        assert f.files == ["idx"] and len(f["idx"]) == 12
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    assert metrics["dense"]["accuracy"] > 0.6 and metrics["macs_reduction"] >= 2.0
    assert json.loads(Path(cfg.paths.export_report).read_text())["parity_score"] <= 1.0


def test_a_two_input_model_on_the_user_s_dataset_exports_with_its_input_names_and_evaluates_in_ort(fresh_userpkg):
    root = fresh_userpkg
    userpkg.write(root, n_train=300, n_test=100)
    cfg = load_config(write_params(root, {
        "data": {"source": "userpkg.data:datasets", "path": "samples", "kwargs": {"two_inputs": True}},
        "model": {"arch": "userpkg.models:ImageAndFeatures", "kwargs": {"width": 16}},
        "train": {"epochs": 3, "batch_size": 32}}))
    for stage in STAGES:
        stage.fn(cfg, root)
    meta = json.loads(Path(cfg.paths.data_meta).read_text())
    assert meta["input_shape"] is None
    assert [(i["shape"], i["dtype"]) for i in meta["inputs"]] == [([1, 8, 8], "float32"), ([4], "float32")]
    for path in (cfg.paths.dense_onnx, cfg.paths.pruned_onnx, cfg.paths.quantized_onnx):
        graph = onnx.load(path).graph
        assert [i.name for i in graph.input] == ["image", "extra"]  # the names of forward's parameters
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch on every input
    exported = json.loads(Path(cfg.paths.export_report).read_text())
    assert exported["parity_score"] <= 1.0 and exported["parity_samples"] == 64
    train = json.loads(Path(cfg.paths.train_report).read_text())
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    # ONNX Runtime, fed both inputs batch by batch, scores the dense model as torch did
    assert metrics["dense"]["accuracy"] == pytest.approx(train["accuracy"], abs=0.011)
    assert metrics["dense"]["accuracy"] > 0.5 and metrics["macs_reduction"] >= 2.0
    assert 0 <= metrics["quantized"]["accuracy"] <= 1


def test_a_dataset_callable_that_returns_something_else_is_one_line_naming_the_key(fresh_userpkg):
    root = fresh_userpkg
    (root / "baddata.py").write_text("def datasets():\n    return [1, 2, 3, 4]\n")
    params = write_params(root, {"data": {"source": "baddata:datasets"}})
    cfg = load_config(params)
    from pruning.errors import ConfigError

    with pytest.raises(ConfigError, match=r'Invalid "data.source": baddata:datasets returned list: expected a '
                                          r"Dataset, \(train, test\)"):
        STAGES[0].fn(cfg, root)
    assert not Path(cfg.paths.data_meta).exists()  # nothing written
    assert yaml.safe_load(params.read_text())["data"]["source"] == "baddata:datasets"


REGRESSION = '''
import torch
from torch import nn
from torch.utils.data import Dataset


class Brightness(Dataset):
    """Predict an image's mean brightness: float targets, no classes."""

    def __init__(self, n: int, seed: int) -> None:
        self.x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.x[i].mean() * 10


def datasets():
    return Brightness(256, 0), Brightness(64, 1)


def regressor(width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1))


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.squeeze(1) - targets).abs().mean()
'''


def test_a_regression_task_with_the_user_s_own_metric_is_pruned_behind_a_gate_on_it(fresh_userpkg):
    root = fresh_userpkg
    (root / "regress.py").write_text(REGRESSION)
    sys.modules.pop("regress", None)
    cfg = load_config(write_params(root, {
        "data": {"source": "regress:datasets"}, "model": {"arch": "regress:regressor", "kwargs": {"width": 16}},
        "task": {"loss": "mse", "metric": "regress:mae", "greater_is_better": False},
        "train": {"epochs": 6, "batch_size": 32},
        "gates": {"quality": {"metric": "metric_drop", "op": "<=", "threshold": 1.0}}}))
    for stage in STAGES:
        stage.fn(cfg, root)
    sys.modules.pop("regress", None)
    metrics = json.loads(Path(cfg.paths.metrics).read_text())
    assert metrics["metric_name"] == "mae" and metrics["greater_is_better"] is False
    assert "accuracy" not in metrics["dense"] and "accuracy_drop" not in metrics
    assert metrics["dense"]["metric"] < 1.0  # the mean absolute error of a brightness in [0, 10] after training
    assert metrics["metric_drop"] == pytest.approx(metrics["pruned"]["metric"] - metrics["dense"]["metric"])
    assert json.loads(Path(cfg.paths.train_report).read_text())["mae"] == pytest.approx(metrics["dense"]["metric"],
                                                                                       abs=1e-4)
    verdict = json.loads(Path(cfg.paths.gates).read_text())
    assert {c["metric"] for c in verdict["checks"]} == {"macs_reduction", "metric_drop", "parity_score"}


def test_gates_on_accuracy_are_refused_when_the_task_metric_is_another(in_tmp):
    from pruning.errors import ConfigError

    with pytest.raises(ConfigError, match=r'Invalid "gates.acc.metric" in .*: \'accuracy_drop\', but task.metric is '
                                          r"'mse': use metric_drop"):
        load_config(write_params(in_tmp, {"task": {"loss": "mse", "metric": "mse"},
                                          "gates": {"acc": {"metric": "accuracy_drop", "op": "<=", "threshold": 0.1}}}))
