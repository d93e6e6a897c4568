"""Positional encodings: telling a permutation-invariant transformer where each patch is.

Self-attention treats its input as a *set*: shuffle the tokens and the outputs
shuffle the same way. Adding a position-dependent vector to each token breaks
that symmetry. Two kinds are offered: the fixed sinusoidal encoding of Vaswani
et al. (2017) and a learned table (as in ViT, Dosovitskiy et al. 2021).
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["sinusoidal_positions", "SinusoidalPositionalEncoding", "LearnedPositionalEncoding",
           "make_positional_encoding", "resample_position_table", "PositionalKind"]

PositionalKind = Literal["sinusoidal", "learned", "none"]


def sinusoidal_positions(n: int, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal position table of Vaswani et al. (2017).

    Shapes: ``() -> (n, dim)``.

    ``PE[pos, 2i] = sin(pos / base^(2i/dim))`` and ``PE[pos, 2i+1] = cos(pos / base^(2i/dim))``.
    Odd ``dim`` is allowed (the last column is a sine).
    """
    if n <= 0 or dim <= 0:
        raise ValueError(f"need n > 0 and dim > 0, got n={n}, dim={dim}")
    positions = torch.arange(n, dtype=torch.float64).unsqueeze(1)           # (n, 1)
    even = torch.arange(0, dim, 2, dtype=torch.float64)                      # 2i
    frequencies = torch.exp(-math.log(base) * even / dim)                    # 1 / base^(2i/dim)
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(positions * frequencies)
    table[:, 1::2] = torch.cos(positions * frequencies[: dim // 2])
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Add the fixed sinusoidal table. Shapes: ``(N, T, dim) -> (N, T, dim)``.

    The table is a non-trainable buffer, saved with the model so a checkpoint
    is self-contained.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_positions(num_tokens, dim).unsqueeze(0), persistent=True)

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens + self.table[:, : tokens.shape[1]].to(tokens.dtype)


class LearnedPositionalEncoding(nn.Module):
    """Add a learned ``(1, T, dim)`` table. Shapes: ``(N, T, dim) -> (N, T, dim)``."""

    def __init__(self, num_tokens: int, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.table, std=init_std)

    def forward(self, tokens: Tensor) -> Tensor:
        table = self.table if tokens.shape[1] == self.table.shape[1] else self.table[:, : tokens.shape[1]]
        return tokens + table


def make_positional_encoding(kind: PositionalKind, num_tokens: int, dim: int) -> nn.Module:
    """Build the positional encoding named by ``kind`` (``"none"`` gives an identity)."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(num_tokens, dim)
    if kind == "learned":
        return LearnedPositionalEncoding(num_tokens, dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown positional encoding {kind!r}: choose one of {typing.get_args(PositionalKind)}")


def resample_position_table(table: Tensor, new_grid: int | tuple[int, int], num_prefix_tokens: int = 1,
                            mode: str = "bicubic") -> Tensor:
    """Resample a learned position table to a new patch grid (a new image size), as timm and the
    ViT paper do for fine-tuning at a higher resolution.

    Shapes: ``(1, prefix + g*g, D) -> (1, prefix + g'*g', D)``. The class token's entry (the first
    ``num_prefix_tokens``) is kept as it is; the patch entries are put back on their ``g x g`` grid
    and interpolated in 2-D (bicubic by default) to ``g' x g'``. The same grid returns the table
    unchanged.
    """
    if table.dim() != 3 or table.shape[0] != 1:
        raise ValueError(f"expected a position table (1, T, D), got shape {tuple(table.shape)}")
    prefix, patches = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch positions do not form a square grid")
    rows, cols = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    if rows <= 0 or cols <= 0:
        raise ValueError(f"new grid must be positive, got {new_grid}")
    if (rows, cols) == (old, old):
        return table.clone()  # nothing to resample (interpolating would also be exact, but need not be)
    dim = table.shape[-1]
    grid = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2)                 # (1, D, g, g)
    resized = F.interpolate(grid.float(), size=(rows, cols), mode=mode, align_corners=False).to(table.dtype)
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)
