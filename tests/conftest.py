"""Shared fixtures. Data-dependent tests need MNIST under $VITLAB_DATA (or ./data).

On a user's machine without the data they are skipped with the reason; in CI
(``CI`` set) missing data is an error, so a misconfigured CI cannot pass by skipping.
"""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch

from vitlab.data import DATASETS, data_root

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
        return __import__(name)
    except ImportError:
        message = f"{name} is not installed (pip install 'vitlab[pretrained]')"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must install the pretrained extra")
        pytest.skip(message)
