"""Small synthetic datasets for fast, real training tests."""

from __future__ import annotations

import torch

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
