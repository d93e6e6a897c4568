"""Measuring a model: its parameters and its forward FLOPs per image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..core.io import unwrap

__all__ = ["count_parameters", "count_flops"]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of ``model`` for one image of shape ``(C, H, W)`` (``torch.utils.flop_counter``;
    1 multiply-add = 2 FLOPs), counted on a zero image on the model's own device. Attention runs through
    its math kernel while counting: the flop counter has no formula for the CPU's fused one and would
    count its matrix products as zero."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())
