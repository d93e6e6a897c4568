"""Data augmentation on whole batches of tensors (no per-image PIL work).

Each function takes a batch ``(N, C, H, W)`` and returns one of the same shape,
drawing an independent random transform for every image from PyTorch's global RNG
(so ``seed`` fixes it). They run on whatever device the batch is on. A named policy
(:data:`AUGMENTATIONS`) is a :class:`Pipeline`: a uint8 stage, normalization, a float stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from .datasets import normalize
from .trivial_augment import batched_trivial_augment

__all__ = ["random_affine", "random_crop", "random_hflip", "trivial_augment", "Pipeline", "get_augmentation",
           "AUGMENTATIONS"]


def random_affine(images: Tensor, degrees: float = 10.0, translate: float = 0.1,
                  scale: tuple[float, float] = (0.9, 1.1), fill: float | None = None) -> Tensor:
    """Random rotation, scaling and translation per image. ``(N, C, H, W) -> (N, C, H, W)``.

    ``translate`` is a fraction of the image size. Pixels moved in from outside
    take the value ``fill`` (default: the batch minimum, i.e. the background).
    """
    n = images.shape[0]
    device, dtype = images.device, images.dtype
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(degrees)
    factor = torch.empty(n, device=device).uniform_(*scale)
    shift = (torch.rand(n, 2, device=device) * 2 - 1) * translate * 2  # grid coords span [-1, 1]
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(dtype), list(images.shape), align_corners=False)
    background = images.amin() if fill is None else torch.as_tensor(fill, device=device, dtype=dtype)
    # grid_sample pads with zeros; shift so that zero is the background value.
    return F.grid_sample(images - background, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + background


def random_crop(images: Tensor, padding: int = 4, fill: float | None = None) -> Tensor:
    """Pad by ``padding`` on every side, then crop back at a random offset per image.

    ``(N, C, H, W) -> (N, C, H, W)``; padding uses ``fill`` (default: the batch minimum, kept a tensor so that a
    GPU batch is never waited for: ``float(images.amin())`` would stop the host for the device every batch).
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    border = torch.ones(h + 2 * padding, w + 2 * padding, dtype=torch.bool, device=images.device)
    border[padding:padding + h, padding:padding + w] = False
    background = images.amin() if fill is None else torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    padded = torch.where(border, background, padded)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None])            # (N, H)
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None])            # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing gathers each image's own window: (N, H, W, C) -> (N, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(images: Tensor, p: float = 0.5) -> Tensor:
    """Flip each image left-right with probability ``p``. ``(N, C, H, W) -> (N, C, H, W)``."""
    flip = torch.rand(images.shape[0], device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def trivial_augment(images: Tensor, group: int = 1, batched: bool | None = None) -> Tensor:
    """TrivialAugment (Müller & Hutter 2021, torchvision's ``TrivialAugmentWide``): a random
    photometric or geometric operation of random strength.

    Works on **uint8** images ``(N, C, H, W) -> (N, C, H, W)``, so it belongs before
    normalization (see :class:`Pipeline`). Each group of ``group`` consecutive images draws its
    own operation. Two implementations of the same augmentation (``batched=None`` picks by device):

    - on the CPU, torchvision's, one call per group: about 12 ms per batch of 128 32x32 images on a
      2-core CPU, far less than a training step, and the recorded CPU runs replay it exactly;
    - on a GPU, :func:`~vitlab.data.trivial_augment.batched_trivial_augment` (one image per group):
      the images grouped by operation, each group transformed at once, so the host does not launch a
      few thousand small kernels per batch and the training step does not wait for them.
    """
    if batched is None:
        batched = images.device.type != "cpu" and group == 1
    if batched:
        if group != 1:
            raise ValueError("the batched TrivialAugment draws one operation per image (group=1)")
        return batched_trivial_augment(images)
    operation = v2.TrivialAugmentWide()
    return torch.cat([operation(chunk) for chunk in images.split(group)])


class Pipeline:
    """An augmentation in two stages: ``before`` on the uint8 batch (operations that need the 0-255
    range, e.g. TrivialAugment), then normalization, then ``after`` on the normalized float batch.
    Either stage may be ``None``.

    ``pipeline(uint8_images, mean, std)`` runs all three steps: ``(N, C, H, W) uint8 -> (N, C, H, W)
    float32``. ``pipeline(float_images)`` runs ``after`` alone, and is refused when there is a uint8
    stage, which would otherwise be skipped without a word.
    """

    def __init__(self, before: Callable[[Tensor], Tensor] | None = None,
                 after: Callable[[Tensor], Tensor] | None = None) -> None:
        self.before = before
        self.after = after

    def __call__(self, images: Tensor, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> Tensor:
        if images.dtype == torch.uint8:
            if mean is None or std is None:
                raise ValueError("a uint8 batch needs the dataset's mean and std: pipeline(images, mean, std)")
            if self.before is not None:
                images = self.before(images)
            images = normalize(images, mean, std)
        elif self.before is not None:
            raise ValueError("this augmentation starts with a uint8 stage (e.g. TrivialAugment): pass the uint8 "
                             "batch with the dataset's mean and std, pipeline(images, mean, std)")
        return self.after(images) if self.after is not None else images

    def __repr__(self) -> str:
        name = lambda f: getattr(f, "__name__", type(f).__name__)  # noqa: E731
        return f"Pipeline(before={name(self.before) if self.before else None}, " \
               f"after={name(self.after) if self.after else None})"


def _digits(images: Tensor) -> Tensor:
    return random_affine(images, degrees=10.0, translate=0.1, scale=(0.9, 1.1))


def _cifar(images: Tensor) -> Tensor:
    return random_hflip(random_crop(images, padding=4))


def _crop(images: Tensor) -> Tensor:
    return random_crop(images, padding=2)


AUGMENTATIONS: dict[str, Pipeline | None] = {
    "none": None,
    "digits": Pipeline(after=_digits),   # small rotations, shifts and zooms: digits must not be flipped
    "crop": Pipeline(after=_crop),
    "cifar": Pipeline(after=_cifar),     # the standard CIFAR recipe: pad-4 random crop + horizontal flip
    # What small-data ViTs need on top: TrivialAugment, then crop + flip.
    "cifar-strong": Pipeline(before=trivial_augment, after=_cifar),
}


def get_augmentation(name: str) -> Pipeline | None:
    """Look an augmentation policy up by name (``none``, ``digits``, ``crop``, ``cifar``, ``cifar-strong``)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; available: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
