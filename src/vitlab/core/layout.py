"""Memory layout: whether image batches and convolution weights are stored channels-first (NCHW, PyTorch's
default) or channels-last (NHWC), chosen per model.

A tensor's shape says nothing about how its numbers lie in memory: an ``(N, C, H, W)`` batch may hold each
channel's plane in turn (``contiguous``) or each pixel's channels side by side (``channels_last``). The
shape and the values are the same either way, and results agree to float rounding (a convolution may sum in
another order); what changes is the speed. CPU convolutions
(oneDNN) and GPU tensor cores run faster on channels-last, where one pixel's channels are one short vector.
``tools/layout_bench.py`` times a real training step of each preset in both layouts, alternating them (its
table is on the documentation's precision page). On a 2-core AMD EPYC: ``simple_cnn`` 1.44x, ResNet-18
1.22x, CCT-2 on CIFAR-10 1.20x faster channels-last; ResNet-20 and CCT-2's small MNIST tokenizer 1.05-1.07x;
the ViTs, whose one convolution is the patch embedding, within the machine's noise (0.93x and 1.17x).

So the layout is a per-family choice: a model class that gains from channels-last says so with a class
attribute ``prefers_channels_last = True`` (the CNNs, the CIFAR ResNets and CCT), and ``--memory-format auto``
(the default) follows it; the ViT families keep PyTorch's layout, which gains them nothing measurable and keeps
their runs bit for bit what they were before the layout existed. ``contiguous`` and ``channels_last`` force one
layout. Weights are always *saved* contiguous (:func:`vitlab.core.io.save_weights`), so a run's files do not
depend on the layout it trained in.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["MemoryFormat", "MEMORY_FORMATS", "prefers_channels_last", "resolve_memory_format",
           "to_memory_format", "model_memory_format", "format_batch"]

MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")


def prefers_channels_last(model: nn.Module) -> bool:
    """The model's own choice (its class attribute ``prefers_channels_last``, False when absent); a DDP or
    ``torch.compile`` wrapper is looked through."""
    inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None) or model
    return bool(getattr(inner, "prefers_channels_last", False))


def resolve_memory_format(model: nn.Module, setting: str = "auto") -> torch.memory_format:
    """``auto`` -> channels-last for a model that prefers it, else contiguous; the other two as named."""
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {setting!r}; choose one of {', '.join(MEMORY_FORMATS)}")
    if setting == "channels_last" or (setting == "auto" and prefers_channels_last(model)):
        return torch.channels_last
    return torch.contiguous_format


def to_memory_format(model: nn.Module, setting: str = "auto") -> torch.memory_format:
    """Move ``model``'s 4-D weights (its convolutions) into the layout ``setting`` resolves to, in place
    (``nn.Module.to(memory_format=...)`` leaves other tensors as they are); returns that layout, for the
    batches (:func:`format_batch`)."""
    memory_format = resolve_memory_format(model, setting)
    model.to(memory_format=memory_format)
    return memory_format


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """The layout ``model``'s convolution weights are in now: channels-last when its first 4-D weight whose two
    layouts differ is channels-last (a weight with one input channel or a 1x1 kernel is both), else contiguous.
    Evaluation feeds batches in this layout, so a model scores in the layout it trained in."""
    for parameter in model.parameters():
        if parameter.dim() == 4 and parameter.is_contiguous() != parameter.is_contiguous(
                memory_format=torch.channels_last):
            return torch.channels_last if parameter.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
    return torch.contiguous_format


def format_batch(images: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``(N, C, H, W) -> (N, C, H, W)`` with the same values, laid out as ``memory_format`` (no copy when it
    already is). Tensors that are not 4-D pass through unchanged."""
    if images.dim() != 4 or memory_format == torch.contiguous_format and images.is_contiguous():
        return images
    return images.contiguous(memory_format=memory_format)
