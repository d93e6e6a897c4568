"""MNIST canvases: a dense dataset (one label per pixel and one box per object) made from real digits.

Classification gives one label per image. Segmentation asks for one label per pixel, detection for
one box and class per object. No such dataset exists offline, so vitlab makes one from MNIST:
real handwritten digits, resized and placed on a larger black canvas::

    canvas (1, S, S) uint8      1-4 digits (configurable) at random scales and positions
    mask   (S, S)    uint8      0 = background, 1 + d = the region of digit d (the digit drawn last wins)
    boxes  (M, 4)    float32    one tight box per digit around its region, (x1, y1, x2, y2) in pixels
    labels (M,)      int64      the digit of each box; rows past the canvas's digit count are -1

The ink of a digit is its pixels >= ``ink_threshold`` after resizing; its *region* is that ink grown
by ``mask_dilation`` pixels in every direction (a square max filter). Why grow it: MNIST strokes are
1-3 pixels wide, thinner than a 7 x 7 patch, so a ViT that decides per patch would do best by
calling every patch background; a region a few pixels wider than the strokes is what a patch-level
model can actually outline (``mask_dilation=0`` keeps the bare strokes: try it in lesson 16's
exercises). The box is the tight box of the region (x2, y2 exclusive: pixel edges). Digits may touch
and overlap, but a new digit is placed elsewhere (up to 50 tries, else dropped) when its box would
cover more than ``max_overlap`` (default 0.3) of a smaller box already there, so no digit is hidden
(with ``max_overlap`` near 1 one could be). Where regions overlap, the mask shows the digit drawn
last, so an earlier digit's mask may be smaller than its box. A faint digit whose ink vanishes when shrunk
(about 1 in 1,000 MNIST digits at 14 pixels, none above 17) is skipped, so a canvas may hold fewer
digits than were drawn for it (rarely none).

Splits come from MNIST's own: ``train`` canvases use MNIST training digits outside vitlab's seeded
validation split of MNIST (the same 10 % that ``load_dataset("mnist", "val")`` holds out), ``val``
canvases use those validation digits, and ``test`` canvases use MNIST's test digits only, so no test
digit is ever seen in training, even by a classifier used to initialize the encoder. Everything is
drawn from ``seed``: the same config gives the same canvases, bit for bit. A split is built once
(seconds) and cached as a ``.safetensors`` file in :func:`vitlab.data.cache_dir`, keyed by the config.

Normalization uses MNIST's mean and std, so a background pixel looks to a model exactly as it does
on MNIST: a classifier trained there starts with the input statistics it knows.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.configs import Config, ConfigError
from ..core.io import atomic_write
from .datasets import cache_dir, epoch_order, load_dataset, normalize

__all__ = ["CanvasConfig", "CanvasDataset", "load_canvas", "make_canvases", "canvas_batches", "DIGITS",
           "SEGMENTATION_CLASSES", "CANVAS_MEAN", "CANVAS_STD"]

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
SEGMENTATION_CLASSES: tuple[str, ...] = ("background", *DIGITS)
CANVAS_MEAN: tuple[float] = (0.1307,)  # MNIST's: see the module docstring
CANVAS_STD: tuple[float] = (0.3081,)
_VERSION = 2  # bump when the generator changes, so old caches are not read as new canvases
_SPLITS = ("train", "val", "test")


@dataclass
class CanvasConfig(Config):
    """How the canvases are drawn. ``canvas_size`` must be a multiple of the model's patch size
    (56 = 8 x 7 fits the shipped MNIST ViT's 7 x 7 patches). ``*_size`` are canvases per split."""

    canvas_size: int = 56
    min_digits: int = 1
    max_digits: int = 4
    min_digit_size: int = 14
    max_digit_size: int = 28
    max_overlap: float = 0.3
    ink_threshold: int = 128
    mask_dilation: int = 2
    train_size: int = 20_000
    val_size: int = 1_000
    test_size: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.min_digits <= self.max_digits:
            raise ConfigError(f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        if not 4 <= self.min_digit_size <= self.max_digit_size <= self.canvas_size:
            raise ConfigError(f"need 4 <= min_digit_size <= max_digit_size <= canvas_size, got "
                              f"{self.min_digit_size}, {self.max_digit_size}, {self.canvas_size}")
        if not 0 <= self.max_overlap <= 1:
            raise ConfigError(f"max_overlap is a fraction in [0, 1], got {self.max_overlap}")
        if not 0 <= self.mask_dilation <= 8:
            raise ConfigError(f"mask_dilation is a few pixels in [0, 8], got {self.mask_dilation}")
        if not 1 <= self.ink_threshold <= 255:
            raise ConfigError(f"ink_threshold is a uint8 level in [1, 255], got {self.ink_threshold}")
        if min(self.train_size, self.val_size, self.test_size) < 1:
            raise ConfigError("every split needs at least one canvas")

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


class CanvasDataset:
    """One split of canvases held in memory (see the module docstring for the tensors).

    ``classes`` are the ten digits (detection's classes); ``segmentation_classes`` adds background
    as class 0 (segmentation's). Same conventions as :class:`vitlab.data.ImageTensorDataset`:
    ``len``, ``subset``, ``normalized``, ``mean``/``std``, ``name``, ``split``, ``source``.
    """

    name = "mnist-canvas"
    classes: tuple[str, ...] = DIGITS
    segmentation_classes: tuple[str, ...] = SEGMENTATION_CLASSES
    mean: tuple[float, ...] = CANVAS_MEAN
    std: tuple[float, ...] = CANVAS_STD

    def __init__(self, images: Tensor, masks: Tensor, boxes: Tensor, labels: Tensor, config: CanvasConfig,
                 split: str, source: str = "") -> None:
        n, size = images.shape[0], config.canvas_size
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (1, size, size):
            raise ValueError(f"canvases must be uint8 (N, 1, {size}, {size}), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if masks.shape != (n, size, size) or boxes.shape != (n, config.max_digits, 4) or \
                labels.shape != (n, config.max_digits):
            raise ValueError(f"masks {tuple(masks.shape)}, boxes {tuple(boxes.shape)} or labels "
                             f"{tuple(labels.shape)} do not match {n} canvases of at most {config.max_digits} digits")
        self.images, self.masks, self.boxes, self.labels = images, masks, boxes.float(), labels.long()
        self.config = config
        self.split = split
        self.source = source

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        size = self.config.canvas_size
        return (f"CanvasDataset(split={self.split!r}, n={len(self)}, canvas={size}x{size}, "
                f"digits={self.num_objects().sum().item()})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 1, self.config.canvas_size, self.config.canvas_size

    def num_objects(self) -> Tensor:
        """``(N,)`` digits on each canvas."""
        return (self.labels >= 0).sum(dim=1)

    def targets(self, index: int) -> dict[str, Tensor]:
        """Canvas ``index``'s objects: ``{"boxes": (m, 4) xyxy pixels, "labels": (m,)}`` (padding dropped)."""
        keep = self.labels[index] >= 0
        return {"boxes": self.boxes[index][keep], "labels": self.labels[index][keep]}

    def subset(self, indices: Tensor) -> CanvasDataset:
        """A new dataset with the given canvases."""
        return CanvasDataset(self.images[indices], self.masks[indices], self.boxes[indices], self.labels[indices],
                             self.config, self.split, self.source)

    def normalized(self, indices: Tensor | slice | None = None) -> Tensor:
        """Normalized float canvases. ``-> (n, 1, S, S)``."""
        images = self.images if indices is None else self.images[indices]
        return normalize(images, self.mean, self.std)


def _resize_digit(digit: Tensor, size: int) -> Tensor:
    """``(28, 28) uint8 -> (size, size) uint8``, antialiased bilinear (a smaller digit stays smooth)."""
    out = F.interpolate(digit[None, None].float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].round().clamp(0, 255).to(torch.uint8)


def _overlap(box: np.ndarray, others: np.ndarray) -> float:
    """The largest share of the smaller box that ``box (4,)`` covers, over ``others (k, 4)`` (xyxy)."""
    if not len(others):
        return 0.0
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return float((w * h / np.minimum(area, areas)).max())


def _region(digit: Tensor, y: int, x: int, size: int, config: CanvasConfig) -> Tensor:
    """Where a digit pasted at ``(y, x)`` counts as the digit: its ink grown by ``mask_dilation`` pixels.
    ``(s, s) uint8 -> (S, S) bool`` on the whole canvas (the growth may reach past the pasted square)."""
    ink = torch.zeros(size, size, dtype=torch.bool)
    side = digit.shape[0]
    ink[y:y + side, x:x + side] = digit >= config.ink_threshold
    d = config.mask_dilation
    if d == 0:
        return ink
    return F.max_pool2d(ink[None, None].float(), 2 * d + 1, stride=1, padding=d)[0, 0].bool()


def make_canvases(digits: Tensor, digit_labels: Tensor, n: int, config: CanvasConfig,
                  seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Draw ``n`` canvases from a pool of digits.

    ``digits (D, 28, 28) uint8``, ``digit_labels (D,)`` -> images ``(n, 1, S, S) uint8``, masks
    ``(n, S, S) uint8``, boxes ``(n, M, 4) float32``, labels ``(n, M) int64`` (M = ``max_digits``).
    The digits are pasted with ``max`` (ink over ink stays ink); the mask takes the digit drawn last
    (its region: the ink grown by ``mask_dilation``).
    """
    rng = np.random.default_rng(seed)
    size, m = config.canvas_size, config.max_digits
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    boxes = torch.zeros(n, m, 4, dtype=torch.float32)
    labels = torch.full((n, m), -1, dtype=torch.int64)
    for i in range(n):
        placed: list[np.ndarray] = []
        for _ in range(int(rng.integers(config.min_digits, config.max_digits + 1))):
            source = int(rng.integers(len(digits)))
            side = int(rng.integers(config.min_digit_size, config.max_digit_size + 1))
            digit = _resize_digit(digits[source], side)
            if not (digit >= config.ink_threshold).any():  # a faint digit shrunk to no ink: skipped
                continue
            y, x = 0, 0
            for _ in range(50):
                y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                region = _region(digit, y, x, size, config)                                # (S, S) bool
                rows, cols = region.any(dim=1).nonzero().squeeze(1), region.any(dim=0).nonzero().squeeze(1)
                box = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
                if _overlap(box, np.array(placed).reshape(-1, 4)) <= config.max_overlap:
                    break
            else:
                continue  # no room: this canvas gets fewer digits
            k = len(placed)
            placed.append(box)
            pixels = images[i, 0, y:y + side, x:x + side]
            torch.maximum(pixels, digit, out=pixels)
            masks[i][region] = int(digit_labels[source]) + 1
            boxes[i, k] = torch.from_numpy(box).float()
            labels[i, k] = int(digit_labels[source])
    return images, masks, boxes, labels


def _fingerprint(config: CanvasConfig, split: str) -> str:
    text = json.dumps({"version": _VERSION, "split": split, **config.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _split_seed(config: CanvasConfig, split: str) -> int:
    return config.seed * 1_000 + _SPLITS.index(split)


def _build(config: CanvasConfig, split: str, root: str | os.PathLike[str] | None, download: bool) -> CanvasDataset:
    # Digits: MNIST's training pool minus vitlab's seeded validation digits (seed 0, 10 %: what
    # load_dataset("mnist") holds out), those validation digits, or MNIST's test set.
    source = load_dataset("mnist", split, root=root, download=download, seed=0)
    images, masks, boxes, labels = make_canvases(source.images[:, 0], source.labels, config.split_size(split),
                                                 config, _split_seed(config, split))
    return CanvasDataset(images, masks, boxes, labels, config, split,
                         f"{len(source)} MNIST {split} digits from {source.source}")


def load_canvas(split: str = "train", config: CanvasConfig | None = None, root: str | os.PathLike[str] | None = None,
                download: bool = True, cache: bool = True) -> CanvasDataset:
    """One split (``train``, ``val`` or ``test``) of the MNIST canvases described by ``config``.

    Built from MNIST (found as :func:`vitlab.data.load_dataset` finds it) on first use, then read from
    the cache; a cache that cannot be written or read costs only time (one warning).
    """
    config = config or CanvasConfig()
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r} for mnist-canvas: choose {', '.join(_SPLITS)}")
    path = cache_dir() / f"mnist-canvas-{split}-{_fingerprint(config, split)}.safetensors"
    if cache and path.is_file():
        try:
            stored = load_file(str(path))
            return CanvasDataset(stored["images"], stored["masks"], stored["boxes"], stored["labels"], config, split,
                                 f"cache {path}")
        except Exception as error:  # a truncated or foreign file: rebuild
            warnings.warn(f"ignoring unreadable canvas cache {path}: {error}", stacklevel=2)
    dataset = _build(config, split, root, download)
    if cache:
        tensors = {"images": dataset.images, "masks": dataset.masks, "boxes": dataset.boxes,
                   "labels": dataset.labels}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: save_file(tensors, tmp))
        except OSError as error:
            warnings.warn(f"could not cache the canvases in {path}: {error}", stacklevel=2)
    return dataset


def canvas_batches(dataset: CanvasDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                   drop_last: bool = False, steps: int | None = None, device: torch.device | str = "cpu",
                   rank: int = 0, world_size: int = 1) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Batches ``(images (B, 1, S, S) float normalized, masks (B, S, S) int64, boxes (B, M, 4), labels
    (B, M))`` on ``device``, in :func:`vitlab.data.epoch_order` when shuffled; at most ``steps``. With
    ``world_size > 1`` each rank gets its own equal shard (as :class:`vitlab.data.BatchLoader` does)."""
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    n = len(dataset)
    order = epoch_order(n, seed, epoch) if shuffle else torch.arange(n)
    if world_size > 1:
        per_rank = n // world_size  # equal shards keep DDP ranks in lock-step
        order = order[: per_rank * world_size][rank::world_size]
        n = len(order)
    for step, start in enumerate(range(0, n, batch_size)):
        idx = order[start:start + batch_size]
        if (drop_last and len(idx) < batch_size) or (steps is not None and step >= steps):
            return
        yield (dataset.normalized(idx).to(device), dataset.masks[idx].long().to(device),
               dataset.boxes[idx].to(device), dataset.labels[idx].to(device))

