"""Batches of an in-memory dataset: cut out of the uint8 tensor by indexing, augmented and normalized on the
device, in a seeded order (one rule, :func:`~vitlab.data.datasets.epoch_order`, for every loader in vitlab)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..core.layout import format_batch
from .augment import Pipeline
from .datasets import ImageTensorDataset, epoch_order, normalize

__all__ = ["BatchLoader"]


class BatchLoader:
    """Iterate over an :class:`ImageTensorDataset` in batches of normalized float tensors.

    Yields ``(images (B, C, H, W) float32, labels (B,) int64)`` on ``device``. The
    order is a permutation drawn from ``seed`` and the epoch number, so a run is
    reproducible and ``set_epoch`` reshuffles. With ``world_size > 1`` each rank
    sees its own disjoint shard (for ``DistributedDataParallel``). ``augment`` runs on
    the device: a :class:`vitlab.augment.Pipeline` gets the uint8 batch and normalizes it
    between its stages; a plain function gets the normalized float batch. ``memory_format`` lays the
    batches out as the model's weights are (:mod:`vitlab.core.layout`; same values, faster convolutions).
    """

    def __init__(self, dataset: ImageTensorDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, device: torch.device | str = "cpu",
                 augment: Callable[[Tensor], Tensor] | None = None, rank: int = 0, world_size: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.augment = augment
        self.rank = rank
        self.world_size = world_size
        self.memory_format = memory_format  # the model's layout (vitlab.core.layout): channels-last for CNNs
        self.epoch = 0
        # Move the uint8 images once: 47 MB for MNIST, far cheaper than per-batch copies.
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.dataset)
        order = epoch_order(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size  # equal shards keep DDP ranks in lock-step
            order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.dataset) // self.world_size if self.world_size > 1 else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._indices().to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            images = self._images[idx]
            if isinstance(self.augment, Pipeline):  # uint8 stage, normalization, float stage
                images = self.augment(images, self.dataset.mean, self.dataset.std)
            else:
                images = normalize(images, self.dataset.mean, self.dataset.std)
                if self.augment is not None:  # a plain function of the normalized batch
                    images = self.augment(images)
            yield format_batch(images, self.memory_format), self._labels[idx]
