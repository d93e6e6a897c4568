"""The class token: one learnable vector prepended to the patch tokens.

It carries no image content of its own; through self-attention it gathers
information from every patch, and the classifier reads only its final state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ClassToken"]


class ClassToken(nn.Module):
    """Prepend a learnable ``(1, 1, dim)`` token to every sequence in the batch.

    Shapes: ``(N, P, dim) -> (N, P + 1, dim)``; the class token is at index 0.
    """

    def __init__(self, dim: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=init_std)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(N, P, dim) -> (N, P + 1, dim)``."""
        return torch.cat([self.token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
