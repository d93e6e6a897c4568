"""Where and how to run: device choice and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "quick_mode"]


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` (e.g. ``"cpu"``, ``"cuda:1"``) overrides the choice; asking for a
    device that is not available is a ``ValueError`` rather than a silent fallback.
    """
    if prefer is not None and prefer != "auto":
        chosen = torch.device(prefer)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} requested but CUDA is not available on this machine")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {prefer!r} requested but this machine has {torch.cuda.device_count()} GPU(s): "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if chosen.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {prefer!r} requested but MPS is not available on this machine")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def quick_mode() -> bool:
    """True when ``VITLAB_QUICK`` is set to a true value (``make test`` sets it): notebooks shrink heavy cells."""
    return os.environ.get("VITLAB_QUICK", "0").strip().lower() not in ("", "0", "false", "no")
