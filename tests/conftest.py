"""Shared fixtures. Data-dependent tests need MNIST under $VITLAB_DATA (or ./data).

Small synthetic data for fast, real training tests: ``halves_dataset(n, seed, size, channels)`` builds an
in-memory two-class set, ``folder_dataset(root)`` a class-per-folder PNG tree (both fixtures return the
builder, so a test calls it with its own sizes).

On a user's machine without the data they are skipped with the reason; in CI
(``CI`` set) missing data is an error, so a misconfigured CI cannot pass by skipping.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

from vitlab.data import DATASETS, ImageTensorDataset, data_root

matplotlib.use("Agg")  # tests draw figures without a screen


def _has(name: str) -> bool:
    root = data_root()
    info = DATASETS[name]
    if info.torchvision_folder and (root / info.torchvision_folder).exists():
        return True
    return any((root / folder / "train").is_dir() for folder, _ in info.image_folders)


def skip_or_fail(missing: str) -> None:
    """Skip a test whose data is missing; in CI (``CI`` set) fail, so CI cannot pass by skipping."""
    message = f"{missing} not found under {data_root()} (set VITLAB_DATA)"
    if os.environ.get("CI"):
        pytest.fail(message + ": CI must provide the datasets")
    pytest.skip(message)


def _require(name: str) -> None:
    if not _has(name):
        skip_or_fail(name)


@pytest.fixture
def mnist_available() -> None:
    _require("mnist")


@pytest.fixture
def fashion_available() -> None:
    _require("fashion-mnist")


@pytest.fixture
def cifar10_available() -> None:
    _require("cifar10")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def require_module(name: str):
    """Import an optional library the tests need (timm, transformers: the ``pretrained`` extra that
    ``make test`` installs). Missing: skipped on a user's machine, an error in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is not installed (pip install 'vitlab[pretrained]')"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must install the pretrained extra")
        pytest.skip(message)


def make_halves(n: int = 256, seed: int = 0, size: int = 28, channels: int = 1) -> ImageTensorDataset:
    """Class 0: the left half is bright; class 1: the right half. Noisy, but learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, channels, size, size), generator=generator)
    half = size // 2
    images[labels == 0, :, :, :half] += 150
    images[labels == 1, :, :, half:] += 150
    return ImageTensorDataset(images.clamp(0, 255).to(torch.uint8), labels, ["left", "right"],
                              (0.3,) * channels, (0.3,) * channels, "halves", "train")


def make_image_folder(root: Path) -> Path:
    """A class-per-folder PNG tree ``root/{train,test}/{left,right}/i.png``: 40 + 10 16x16 images per class."""
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", 40), ("test", 10)):
        for label, name in enumerate(["left", "right"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 60, (16, 16, 3), generator=generator, dtype=torch.uint8)
                pixels[:, (0 if label == 0 else 8):(8 if label == 0 else 16)] += 150
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def halves_dataset() -> Callable[..., ImageTensorDataset]:
    """The builder of a learnable two-class set: class 0 has a bright left half, class 1 a bright right half."""
    return make_halves


@pytest.fixture(scope="session")
def folder_dataset() -> Callable[[Path], Path]:
    """The builder of a class-per-folder PNG tree ``root/{train,test}/{left,right}/i.png``."""
    return make_image_folder
