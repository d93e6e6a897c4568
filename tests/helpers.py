"""Small synthetic datasets for fast, real training tests."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from vitlab.data import ImageTensorDataset


def halves_dataset(n: int = 256, seed: int = 0, size: int = 28, channels: int = 1) -> ImageTensorDataset:
    """Class 0: the left half is bright; class 1: the right half. Noisy, but learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, channels, size, size), generator=generator)
    half = size // 2
    images[labels == 0, :, :, :half] += 150
    images[labels == 1, :, :, half:] += 150
    return ImageTensorDataset(images.clamp(0, 255).to(torch.uint8), labels, ["left", "right"],
                              (0.3,) * channels, (0.3,) * channels, "halves", "train")


def folder_dataset(root: Path) -> Path:
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
