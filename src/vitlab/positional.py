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
from torch import Tensor, nn

__all__ = ["sinusoidal_positions", "SinusoidalPositionalEncoding", "LearnedPositionalEncoding",
           "make_positional_encoding", "PositionalKind"]

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
