"""A user's project as a new user brings it, written into a temporary workspace by the tests: a model class that is
not in the zoo, a Dataset that streams samples from many small files, a two-input model and its Dataset, and the
trained weights saved with ``torch.save(model.state_dict())``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MODELS = '''
import torch
from torch import nn


class DigitNet(nn.Module):
    """A user's CNN for 8x8 digits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.max_pool2d(self.features(x), 2).flatten(1))


class ImageAndFeatures(nn.Module):
    """Two inputs: an image and a vector of extra features, fused before the classifier."""

    def __init__(self, width: int = 16, features: int = 4) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 2 * width), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.ReLU())
        self.head = nn.Linear(3 * width, 10)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(nn.functional.max_pool2d(self.conv(image), 2))
        return self.head(torch.cat([pooled, self.mlp(extra)], 1))
'''

DATA = '''
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


class DigitFiles(Dataset):
    """One sample per .npy file (<index>_<label>.npy), read when asked for: nothing is held in memory."""

    classes = [str(i) for i in range(10)]

    def __init__(self, folder: Path, two_inputs: bool = False) -> None:
        self.files = sorted(Path(folder).glob("*.npy"))
        self.two_inputs = two_inputs

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        f = self.files[i]
        image = torch.from_numpy(np.load(f, allow_pickle=False))
        label = int(f.stem.split("_")[1])
        if self.two_inputs:
            extra = torch.stack([image.mean(), image.std(), image[:, :4].mean(), image[:, 4:].mean()])
            return (image, extra), label
        return image, label


def datasets(path: str, two_inputs: bool = False):
    root = Path(path)
    return DigitFiles(root / "train", two_inputs), DigitFiles(root / "test", two_inputs)
'''


def write(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """The package ``userpkg`` and the sample files under ``root``; returns the samples folder."""
    from sklearn.datasets import load_digits

    pkg = root / "userpkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(MODELS)
    (pkg / "data.py").write_text(DATA)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(x))
    samples = root / "samples"
    for split, idx in (("train", order[:n_train]), ("test", order[n_train:n_train + n_test])):
        (samples / split).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(idx):
            np.save(samples / split / f"{k:05d}_{y[i]}.npy", x[i])
    return samples
