"""Memory layout: whether image batches and convolution weights are stored channels-first (NCHW, PyTorch's
default) or channels-last (NHWC), chosen per model.

A tensor's shape says nothing about how its numbers lie in memory: an ``(N, C, H, W)`` batch may hold each
channel's plane in turn (``contiguous``) or each pixel's channels side by side (``channels_last``). The
shape and the values are the same either way, and results agree to float rounding (a convolution may sum in
another order); what changes is the speed. CPU convolutions (oneDNN) and GPU tensor cores run
faster on channels-last, where one pixel's channels are one short vector; oneDNN picks the layout from the
input, so a channels-last batch (CIFAR's ``random_crop`` returns one) already gets most of the gain.
``tools/layout_bench.py`` times a real training step of each preset in both layouts, alternating them (its
table is on the documentation's precision page). On a 2-core AMD EPYC, against the path of every run before
this setting: ``simple_cnn`` on MNIST 1.42x and ResNet-18 without augmentation 1.22x faster channels-last;
the CIFAR models trained with crops, whose batches were channels-last already, within the noise.

So the layout is a per-family choice: a model class that gains from channels-last says so with a class
attribute ``prefers_channels_last = True`` (the CNNs, the CIFAR ResNets and CCT), and ``--memory-format auto``
(the default) follows it; the ViT families have no convolution (vitlab's patch embedding is a reshape and a
linear layer) and keep everything as it was, bit for bit. ``contiguous`` is the path of every run before the
setting existed: PyTorch's default weights, the batch as augmentation leaves it; ``channels_last`` converts
both. Weights are always *saved* contiguous (:func:`vitlab.core.io.save_weights`), so a run's files do not
depend on the layout it trained in.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from .io import unwrap

__all__ = ["MemoryFormat", "MEMORY_FORMATS", "prefers_channels_last", "resolve_memory_format",
           "to_memory_format", "model_memory_format", "format_batch"]

MemoryFormat = Literal["auto", "contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = get_args(MemoryFormat)  # the Literal's values, written once


def prefers_channels_last(model: nn.Module) -> bool:
    """The model's own choice (its class attribute ``prefers_channels_last``, False when absent); a DDP or
    ``torch.compile`` wrapper is looked through."""
    return bool(getattr(unwrap(model), "prefers_channels_last", False))


def resolve_memory_format(model: nn.Module, setting: MemoryFormat = "auto") -> torch.memory_format:
    """``auto`` -> channels-last for a model that prefers it, else contiguous; the other two as named."""
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {setting!r}; choose one of {', '.join(MEMORY_FORMATS)}")
    if setting == "channels_last" or (setting == "auto" and prefers_channels_last(model)):
        return torch.channels_last
    return torch.contiguous_format


def to_memory_format(model: nn.Module, setting: MemoryFormat = "auto") -> torch.memory_format:
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
    """``(N, C, H, W) -> (N, C, H, W)`` with the same values: laid out channels-last when ``memory_format`` is
    ``torch.channels_last`` (no copy when it already is), otherwise returned as it comes. The batch is not forced
    back to contiguous because it never was before layouts were chosen: ``random_crop`` hands back a
    channels-last-strided batch, and a model that keeps PyTorch's layout (a ViT) trains on exactly the batches,
    and the numbers, it always did. Tensors that are not 4-D pass through unchanged."""
    if images.dim() != 4 or memory_format != torch.channels_last:
        return images
    return images.contiguous(memory_format=torch.channels_last)
