"""Floor 3, data: labelled image sets held in memory as uint8 tensors (:mod:`~vitlab.data.datasets`), batch
augmentation (:mod:`~vitlab.data.augment`; TrivialAugment for whole batches on a GPU,
:mod:`~vitlab.data.trivial_augment`), the seeded batch loader (:mod:`~vitlab.data.loader`) and the
MNIST canvases of the dense tasks (:mod:`~vitlab.data.canvas`). Nothing here knows about models.

``vitlab.data.load_dataset`` and the rest of :mod:`~vitlab.data.datasets` are re-exported here, the names the
lessons use."""

from __future__ import annotations

from .datasets import (
    DATASETS,
    RESIZE_MODES,
    CorruptImageError,
    DatasetInfo,
    DatasetNotFoundError,
    ImageTensorDataset,
    cache_dir,
    canonical_name,
    data_root,
    epoch_order,
    fit_image,
    load_dataset,
    load_image_folder,
    noisy_labels,
    normalize,
    split_indices,
    stratified_split_indices,
)
from .loader import BatchLoader

__all__ = [
    "DATASETS", "BatchLoader", "CorruptImageError", "DatasetInfo", "DatasetNotFoundError", "ImageTensorDataset",
    "cache_dir", "canonical_name", "data_root", "epoch_order", "load_dataset", "load_image_folder", "normalize",
    "split_indices", "stratified_split_indices", "fit_image", "RESIZE_MODES", "noisy_labels",
]
