"""Multi-head self-attention (Vaswani et al. 2017), the heart of the transformer.

Every token builds a query, a key and a value; each token's output is the
average of all values, weighted by ``softmax(q . k / sqrt(d_head))``. Several
heads do this in parallel on slices of the hidden size and their outputs are
concatenated and projected back.

The fast path calls :func:`torch.nn.functional.scaled_dot_product_attention`
(fused kernels on GPU and CPU; on a CPU under bf16 it runs in fp32 while training, see
:func:`vitlab.precision.attention_dtype`). When the attention weights themselves are
wanted (attention maps, rollout) the explicit formula is used instead; both
give the same output up to float rounding, and a test checks it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.precision import attention_dtype

__all__ = ["scaled_dot_product_attention", "attend", "MultiHeadSelfAttention", "check_heads"]


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit attention, returning the output and the weights.

    Shapes: ``q, k, v: (..., T, d) -> out (..., T, d), weights (..., T, T)``; every
    row of ``weights`` sums to 1.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, dropout: float = 0.0,
           return_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Attention as the models compute it: PyTorch's fused kernel, or, when the weights are wanted,
    the explicit formula (same output up to float rounding).

    Shapes: ``q, k, v: (..., T, d) -> out (..., T, d)`` and ``weights (..., T, T)`` (``None`` from the
    fused kernel). ``bias`` is added to the scores before the softmax, broadcast to ``(..., T, T)``
    (``-inf`` forbids a pair; Swin's relative position bias and window mask); ``dropout`` applies to
    the weights (pass 0 in evaluation).
    """
    if not return_weights:
        compute = attention_dtype(q)
        if compute is not None:  # fp32 kernel inside a bf16 pass (autocast would cast it back: turn it off)
            with torch.autocast(q.device.type, enabled=False):
                mask = bias.to(compute) if bias is not None else None
                out = F.scaled_dot_product_attention(q.to(compute), k.to(compute), v.to(compute), attn_mask=mask,
                                                     dropout_p=dropout)
            return out.to(q.dtype), None
        mask = bias.to(q.dtype) if bias is not None else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    weights = (scores if bias is None else scores + bias).softmax(dim=-1)
    dropped = F.dropout(weights, dropout) if dropout else weights
    return dropped @ v, weights


def check_heads(dim: int, heads: int) -> None:
    """Raise ``ValueError`` unless ``dim`` splits evenly into ``heads`` heads (each head gets ``dim / heads``)."""
    if heads <= 0 or dim % heads != 0:
        raise ValueError(f"hidden size {dim} is not divisible by the number of heads {heads}")


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection.

    Shapes: ``(N, T, dim) -> (N, T, dim)``; with ``return_attention=True`` also
    the weights ``(N, heads, T, T)``.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_dropout = attn_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(proj_dropout)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(N, T, dim) -> q, k, v`` each ``(N, heads, T, head_dim)``."""
        n, t, _ = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # unbind, not qkv[i]: its backward is one stack, not 3 zero-filled copies
        return q, k, v

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``(N, T, dim) -> (N, T, dim)`` [and ``(N, heads, T, T)`` weights]."""
        n, t, _ = x.shape
        q, k, v = self.split_heads(x)
        out, weights = attend(q, k, v, dropout=self.attn_dropout if self.training else 0.0,
                              return_weights=return_attention)
        out = out.transpose(1, 2).reshape(n, t, self.dim)                   # concatenate the heads
        out = self.proj_dropout(self.proj(out))
        return (out, weights) if return_attention else out
