"""The transformer encoder block: pre-norm attention and MLP, each wrapped in a residual.

``x = x + MSA(LN(x))`` then ``x = x + MLP(LN(x))``, as in ViT (Dosovitskiy et
al. 2021). Residuals let gradients flow through deep stacks; LayerNorm before
each sub-layer (pre-norm) keeps training stable without a careful warmup.
"""

from __future__ import annotations

from torch import Tensor, nn

from .attention import MultiHeadSelfAttention

__all__ = ["MLP", "DropPath", "EncoderBlock", "init_transformer_weights"]


def init_transformer_weights(module: nn.Module) -> None:
    """The usual transformer initialization (ViT, DeiT and Swin code, timm), for ``model.apply``:
    truncated normal (std 0.02) for linear layers with zero biases; LayerNorm as the identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MLP(nn.Module):
    """Two linear layers with a GELU between. Shapes: ``(N, T, dim) -> (N, T, dim)``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: during training, skip a residual branch for a random subset of samples.

    Shapes: ``(N, ...) -> (N, ...)``. Kept samples are rescaled by ``1 / (1 - p)`` so the
    expected value is unchanged; at evaluation it is the identity.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class EncoderBlock(nn.Module):
    """LN -> multi-head self-attention -> residual, LN -> MLP (GELU) -> residual.

    Shapes: ``(N, T, dim) -> (N, T, dim)``; with ``return_attention=True`` also the
    attention weights ``(N, heads, T, T)``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(dim, heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout,
                                           proj_dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if return_attention:
            attended, weights = self.attn(self.norm1(x), return_attention=True)
        else:
            attended = self.attn(self.norm1(x))
        x = x + self.drop_path(attended)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x
