"""Memory layout: whether image batches and convolution weights are stored channels-first (NCHW, PyTorch's
default) or channels-last (NHWC), chosen per model.

A tensor's shape says nothing about how its numbers lie in memory: an ``(N, C, H, W)`` batch may hold each
channel's plane in turn (``contiguous``) or each pixel's channels side by side (``channels_last``). The
shape, the values and every result stay the same either way; only the speed changes. CPU convolutions
(oneDNN) and GPU tensor cores run faster on channels-last, where one pixel's channels are one short vector.
Measured on a 2-core AMD EPYC without AMX (fp32, batch 128, one AdamW training step, model and batch both
channels-last against both contiguous): CCT-2/3x2 on CIFAR-10 1.42x faster (0.544 -> 0.384 s), on MNIST
with a 32-channel tokenizer 1.54x (0.261 -> 0.169 s), CIFAR ResNet-20 1.20x (0.468 -> 0.389 s), ResNet-18
1.25x, VGG-11 1.03x. A ViT is slower (``vit_mnist`` 0.053 -> 0.061 s, ``vit_cifar_small`` 0.523 -> 0.595 s):
its only convolution is the patch embedding, whose channels-last output must be copied back into token
order.

So the layout is a per-family choice: a model class that gains from channels-last says so with a class
attribute ``prefers_channels_last = True`` (the CNNs and CCT), and ``--memory-format auto`` (the default)
follows it. ``contiguous`` and ``channels_last`` force one layout. Weights are always *saved* contiguous
(:func:`vitlab.core.io.save_weights`), so a run's files do not depend on the layout it trained in.
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
