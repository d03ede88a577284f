import numpy as np
import pytest
import torch

from pruning.arrays import load_split, read_arrays, save_arrays
from pruning.data import DataConfig, Split, calibration_batches, calibration_sample
from pruning.errors import DataError


def test_load_split_gives_stratified_deterministic_digits_when_seeded():
    (x1, y1), (xt1, yt1) = load_split(DataConfig(), seed=3)
    (x2, y2), _ = load_split(DataConfig(), seed=3)
    (x3, _), _ = load_split(DataConfig(), seed=4)
    assert x1.shape[1:] == (1, 8, 8) and x1.dtype == np.float32 and y1.dtype == np.int64
    assert len(x1) + len(xt1) == 1797
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert set(np.unique(yt1)) == set(range(10))  # stratified: every class in the test split
    assert x1.min() >= 0.0 and x1.max() <= 1.0


def test_load_split_generates_mnist1d_offline():
    (x, y), (xt, _) = load_split(DataConfig(source="mnist1d", mnist1d_samples=200), seed=0)
    assert x.shape[1:] == (1, 40)
    assert len(x) + len(xt) == 200
    assert set(np.unique(y)) <= set(range(10))


def test_load_split_reads_user_npz_in_both_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 12)).astype(np.float32), np.arange(50) % 5
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    (xtr, ytr), (xte, _) = load_split(DataConfig(source="npz", path=str(tmp_path / "xy.npz"), test_fraction=0.2), 0)
    assert xtr.shape == (40, 1, 12) and xte.shape == (10, 1, 12)  # a channel axis is added to vectors
    np.savez(tmp_path / "split.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    (xtr, _), (xte, _) = load_split(DataConfig(source="npz", path=str(tmp_path / "split.npz")), 0)
    assert len(xtr) == 30 and len(xte) == 20


def test_load_split_rejects_npz_when_labels_are_not_integers(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 3), np.float32), y=np.zeros(10, np.float32))
    with pytest.raises(DataError, match="labels y must be integers"):
        load_split(DataConfig(source="npz", path=str(tmp_path / "bad.npz")), 0)


def test_load_split_rejects_npz_when_keys_are_unknown(tmp_path):
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(DataError, match=r"expected arrays x, y .* found \['a'\]"):
        load_split(DataConfig(source="npz", path=str(tmp_path / "bad.npz")), 0)


def test_save_arrays_round_trips_without_pickles(tmp_path):
    x, y = np.ones((4, 1, 3), np.float32), np.arange(4)
    save_arrays(tmp_path / "d" / "s.npz", x, y)
    x2, y2 = read_arrays(tmp_path / "d" / "s.npz")
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_calibration_batches_cycle_through_a_seeded_permutation_when_the_split_is_small():
    batches = calibration_batches(100, 3, seed=0)
    assert [len(b) for b in batches] == [64, 36, 64]  # the second batch takes what is left, the third starts again
    assert sorted(batches[0].tolist() + batches[1].tolist()) == list(range(100))
    assert all(torch.equal(a, b) for a, b in zip(batches, calibration_batches(100, 3, seed=0), strict=True))


def test_calibration_sample_takes_batches_times_64_samples_when_there_are_enough():
    import torch

    split = Split(torch.arange(1000).float()[:, None], torch.arange(1000))
    sample = calibration_sample(split, 2, seed=1)
    assert len(sample.x) == 128 and torch.equal(sample.x[:, 0].long(), sample.y)
    assert len(calibration_sample(Split(split.x[:50], split.y[:50]), 2, seed=1).x) == 50


@pytest.mark.parametrize("damage", ["truncated", "npy", "strings"])
def test_a_damaged_split_file_says_rerun_prepare(tmp_path, damage):
    path = tmp_path / "train.npz"
    save_arrays(path, np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "npy":
        np.save(tmp_path / "x.npy", np.zeros(3))
        path.write_bytes((tmp_path / "x.npy").read_bytes())
    else:
        with open(path, "wb") as f:
            np.savez(f, a=np.array(["x"]))
    with pytest.raises(DataError, match=r"is not a split the prepare stage wrote .*: rerun the prepare stage"):
        read_arrays(path)


def test_a_damaged_meta_file_says_rerun_prepare(tmp_path):
    from pruning.data import load_data

    save_arrays(tmp_path / "a.npz", np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    (tmp_path / "meta.json").write_text('{"num_classes": 10')
    with pytest.raises(DataError, match=r"meta.json is damaged \(JSONDecodeError"):
        load_data(tmp_path / "a.npz", tmp_path / "a.npz", tmp_path / "meta.json")
    (tmp_path / "meta.json").write_text('{"input_shape": [3]}')
    with pytest.raises(DataError, match=r"meta.json is damaged \(KeyError"):
        load_data(tmp_path / "a.npz", tmp_path / "a.npz", tmp_path / "meta.json")


def test_at_length_cuts_or_fills_token_inputs_only():
    import torch

    from pruning.data import at_length, has_sequence

    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    x = {"input_ids": ids, "attention_mask": (ids > 0).long(), "pixel_values": torch.ones(2, 3, 4, 4)}
    assert [has_sequence(t) for t in x.values()] == [True, True, False]
    short, long = at_length(x, 2), at_length(x, 6)
    assert short["input_ids"].tolist() == [[5, 6], [8, 9]] and short["pixel_values"].shape == (2, 3, 4, 4)
    assert long["input_ids"].tolist() == [[5, 6, 7, 0, 5, 6], [8, 9, 0, 0, 8, 9]]
    assert long["attention_mask"].shape == (2, 6)
