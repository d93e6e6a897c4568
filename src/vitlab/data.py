"""Datasets held in memory as uint8 tensors, normalized per batch.

MNIST-sized datasets fit in memory many times over, so instead of decoding one
PIL image at a time through a ``DataLoader`` we keep the whole split as a
``uint8`` tensor ``(N, C, H, W)`` and cut batches out of it by indexing: an
epoch of MNIST costs milliseconds of data work instead of seconds.

Where the files come from:

* ``root`` argument, else the ``VITLAB_DATA`` environment variable, else
  ``data/`` at the repository root (``./data`` when installed elsewhere);
* MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 are parsed (and, if allowed,
  downloaded) by torchvision's own dataset classes;
* CIFAR-10/100 are also accepted as an ImageFolder tree
  ``<root>/cifar10-png/{train,test}/<class>/*.png`` (``cifar100-png`` likewise);
* any class-per-folder image collection loads through :func:`load_image_folder`.

A dataset that is missing and cannot be downloaded raises one
:class:`DatasetNotFoundError` naming the directory searched, the files
expected and how to get them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = [
    "DatasetInfo", "DATASETS", "DatasetNotFoundError", "ImageTensorDataset", "BatchLoader",
    "data_root", "load_dataset", "load_image_folder", "normalize", "split_indices",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded. The message says where and how to get it."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a named dataset. ``mean``/``std`` are per channel, on the [0, 1] scale,
    computed over the official training split (a test recomputes them from the files)."""

    name: str
    torchvision_class: str
    torchvision_folder: str
    expected_files: tuple[str, ...]
    classes: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_folder: str | None = None
    source: str = ""


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "mnist", "MNIST", "MNIST/raw", tuple(f + "[.gz]" for f in _MNIST_FILES),
        tuple(str(d) for d in range(10)), 28, 1, (0.1307,), (0.3081,),
        source="http://yann.lecun.com/exdb/mnist/ (torchvision mirrors)"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "FashionMNIST", "FashionMNIST/raw", tuple(f + "[.gz]" for f in _MNIST_FILES),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"), 28, 1, (0.2860,), (0.3530,),
        source="https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR10", "cifar-10-batches-py",
        ("data_batch_1 .. data_batch_5", "test_batch", "batches.meta"),
        _CIFAR10_CLASSES, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        image_folder="cifar10-png", source="https://www.cs.toronto.edu/~kriz/cifar.html"),
    "cifar100": DatasetInfo(
        "cifar100", "CIFAR100", "cifar-100-python", ("train", "test", "meta"),
        (), 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        image_folder="cifar100-png", source="https://www.cs.toronto.edu/~kriz/cifar.html"),
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100"}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data directory: ``root``, else ``$VITLAB_DATA``, else ``data/`` at the repo root."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("VITLAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():  # editable install from a checkout
        return repo / "data"
    return Path.cwd() / "data"


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images to normalized floats. Shapes: ``(N, C, H, W) uint8 -> (N, C, H, W) float32``."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - m) / s


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into ``(train, val)`` index tensors, each sorted."""
    if not 0 <= val_size < n:
        raise ValueError(f"validation size {val_size} must be in [0, {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


class ImageTensorDataset(torch.utils.data.Dataset):
    """A labelled image set held in memory.

    ``images``: ``(N, C, H, W)`` uint8; ``labels``: ``(N,)`` int64. Indexing returns one
    normalized ``(C, H, W)`` float image and its label, so it also works with a
    plain ``DataLoader``; :class:`BatchLoader` is the fast way to iterate.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], name: str = "", split: str = "") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need one value per channel ({images.shape[1]})")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return normalize(self.images[index : index + 1], self.mean, self.std)[0], int(self.labels[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (f"ImageTensorDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"images={c}x{h}x{w}, classes={len(self.classes)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Tensor, split: str | None = None) -> "ImageTensorDataset":
        """A new dataset with the given rows (shares no memory with views of the old one)."""
        return ImageTensorDataset(self.images[indices], self.labels[indices], self.classes, self.mean,
                                  self.std, self.name, split if split is not None else self.split)

    def class_counts(self) -> Tensor:
        """``(classes,)`` number of samples per class."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def normalized(self, indices: Tensor | slice | None = None) -> Tensor:
        """Normalized float images. ``-> (n, C, H, W)``."""
        images = self.images if indices is None else self.images[indices]
        return normalize(images, self.mean, self.std)


class BatchLoader:
    """Iterate over an :class:`ImageTensorDataset` in batches of normalized float tensors.

    Yields ``(images (B, C, H, W) float32, labels (B,) int64)`` on ``device``. The
    order is a permutation drawn from ``seed`` and the epoch number, so a run is
    reproducible and ``set_epoch`` reshuffles. With ``world_size > 1`` each rank
    sees its own disjoint shard (for ``DistributedDataParallel``). ``augment`` is
    applied to the float batch on the device, after normalization; an augmentation
    with a ``before`` stage (:class:`vitlab.augment.Pipeline`) also gets the uint8 batch.
    """

    def __init__(self, dataset: ImageTensorDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, device: torch.device | str = "cpu",
                 augment: Callable[[Tensor], Tensor] | None = None, rank: int = 0, world_size: int = 1) -> None:
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
        self.epoch = 0
        # Move the uint8 images once: 47 MB for MNIST, far cheaper than per-batch copies.
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size  # equal shards keep DDP ranks in lock-step
            order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.dataset) // self.world_size if self.world_size > 1 else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        n = len(self.dataset) // self.world_size if self.world_size > 1 else len(self.dataset)
        return (n // self.batch_size) * self.batch_size if self.drop_last else n

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._indices().to(self.device)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            images = self._images[idx]
            before = getattr(self.augment, "before", None)
            if before is not None:  # stages that need uint8 pixels (e.g. TrivialAugment)
                images = before(images)
            images = normalize(images, self.dataset.mean, self.dataset.std)
            if self.augment is not None:
                images = self.augment(images)
            yield images, self._labels[idx]


# --------------------------------------------------------------------------- loading


def _not_found(info: DatasetInfo, root: Path, reason: str) -> DatasetNotFoundError:
    searched = [root / info.torchvision_folder]
    if info.image_folder:
        searched.append(root / info.image_folder / "{train,test}/<class>/")
    lines = [
        f"Dataset {info.name!r} was not found and could not be downloaded ({reason}).",
        "Searched: " + "; ".join(str(p) for p in searched),
        f"Expected files in {root / info.torchvision_folder}: {', '.join(info.expected_files)}",
    ]
    if info.image_folder:
        lines.append(f"or an ImageFolder tree {root / info.image_folder}/train/<class>/*.png and .../test/<class>/*.png")
    lines += [
        "How to fix it, any one of:",
        f"  * connect to the internet and run: python -m vitlab download {info.name} --root {root}",
        f"  * download the files yourself from {info.source} into {root / info.torchvision_folder}",
        "  * point VITLAB_DATA (or root=) at a folder that already holds them",
    ]
    return DatasetNotFoundError("\n".join(lines))


def _read_torchvision(info: DatasetInfo, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor, list[str]]:
    """Parse (and maybe download) with torchvision. Returns uint8 ``(N, C, H, W)``, labels, class names."""
    from torchvision import datasets as tvd

    cls = getattr(tvd, info.torchvision_class)
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError as missing:
        if not download:
            raise _not_found(info, root, "download=False") from None
        try:
            root.mkdir(parents=True, exist_ok=True)
            ds = cls(root=str(root), train=train, download=True)
        except Exception as error:  # URLError, HTTPError, timeouts, checksum failures...
            reason = " ".join(str(error).split())  # one line: the urllib chain is noise here
            raise _not_found(info, root, f"download failed: {type(error).__name__}: {reason}") from None
    data = ds.data if isinstance(ds.data, Tensor) else torch.from_numpy(ds.data)
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # HWC -> CHW
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    classes = [c.split(" - ", 1)[-1] for c in ds.classes]
    return images.contiguous(), labels, classes


def _decode_folder(folder: Path, image_size: int | None, channels: int,
                   classes: Sequence[str] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """Decode every image of a class-per-folder tree into uint8 ``(N, C, S, S)``.

    Images are converted to ``channels`` (1 = grayscale, 3 = RGB) and, when
    ``image_size`` is given and differs, resized to ``S x S``.
    """
    from PIL import Image

    class_names = list(classes) if classes else sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not class_names:
        raise DatasetNotFoundError(f"no class folders found in {folder} (expected {folder}/<class>/<image files>)")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    images: list[Tensor] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if class_dir.is_dir() else []
        for path in files:
            with Image.open(path) as img:
                img = img.convert(mode)
                if image_size is not None and img.size != (image_size, image_size):
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
                images.append(array.view(img.size[1], img.size[0], channels).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    sizes = {tuple(t.shape) for t in images}
    if len(sizes) > 1:
        raise ValueError(f"images under {folder} have different sizes {sorted(sizes)[:4]}...; pass image_size= to resize")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), class_names


@functools.lru_cache(maxsize=8)
def _load_split(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    info = DATASETS[name]
    if info.image_folder is not None and not (root / info.torchvision_folder).exists():
        folder = root / info.image_folder / ("train" if train else "test")
        if folder.is_dir():
            classes = info.classes or None
            images, labels, names = _decode_folder(folder, info.image_size, info.channels, classes)
            return images, labels, tuple(names)
    images, labels, names = _read_torchvision(info, root, train, download)
    return images, labels, tuple(names)


def _train_val_split(dataset: ImageTensorDataset, split: str, val_size: int | float, seed: int) -> ImageTensorDataset:
    """Carve the ``train`` or ``val`` part out of a training pool (other splits pass through)."""
    if split not in ("train", "val"):
        return dataset
    n_val = int(round(val_size * len(dataset))) if isinstance(val_size, float) else int(val_size)
    train_idx, val_idx = split_indices(len(dataset), n_val, seed)
    return dataset.subset(train_idx if split == "train" else val_idx, split)


def _resolve_name(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)} (or folder:PATH)")
    return key


def _take_subset(dataset: ImageTensorDataset, subset: int | None, seed: int) -> ImageTensorDataset:
    if subset is None or subset >= len(dataset):
        return dataset
    if subset <= 0:
        raise ValueError(f"subset must be positive, got {subset}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + 1))
    return dataset.subset(order[:subset].sort().values)


def load_dataset(name: str, split: str = "train", root: str | os.PathLike[str] | None = None,
                 download: bool = True, val_size: int | float = 0.1, seed: int = 0,
                 subset: int | None = None, image_size: int | None = None,
                 channels: int | None = None) -> ImageTensorDataset:
    """Load a dataset split into memory.

    ``name``: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, or ``folder:PATH``
    (see :func:`load_image_folder`). ``split``: ``train`` and ``val`` partition the
    official training set with a seeded split of ``val_size`` samples (an int, or a
    fraction); ``train+val`` is the whole official training set; ``test`` is the
    official test set. ``subset`` keeps a seeded random sample of that many images
    (quick mode). The same ``seed`` always gives the same split and subset.
    """
    if name.startswith("folder:"):
        return load_image_folder(name[len("folder:"):], split, image_size=image_size or 32,
                                 channels=channels or 3, val_size=val_size, seed=seed, subset=subset)
    key = _resolve_name(name)
    if split not in ("train", "val", "test", "train+val"):
        raise ValueError(f"unknown split {split!r}: choose 'train', 'val', 'train+val' or 'test'")
    info = DATASETS[key]
    base = data_root(root)
    images, labels, classes = _load_split(key, base, split != "test", download)
    dataset = ImageTensorDataset(images, labels, info.classes or classes, info.mean, info.std, key, split)
    return _take_subset(_train_val_split(dataset, split, val_size, seed), subset, seed)


def load_image_folder(path: str | os.PathLike[str], split: str = "train", image_size: int = 32, channels: int = 3,
                      val_size: int | float = 0.1, seed: int = 0, subset: int | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ImageTensorDataset:
    """Load a class-per-folder image collection (torchvision ImageFolder layout) into memory.

    Split rule: if ``PATH/train`` exists, it is the training set and ``PATH/test``
    (or ``PATH/val``) the test set; ``train``/``val`` splits are then carved from
    ``PATH/train`` with a seeded ``val_size``. Otherwise ``PATH/<class>/...`` is one
    pool, split by seed into test (20 %), and train/val from the rest.
    Images are converted to ``channels`` and resized to ``image_size`` squared.
    Normalization statistics default to the ones of the training images.
    """
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"image folder {folder} does not exist (expected {folder}/<class>/<images>)")
    if split not in ("train", "val", "test", "train+val"):
        raise ValueError(f"unknown split {split!r}: choose 'train', 'val', 'train+val' or 'test'")
    has_split = (folder / "train").is_dir()
    if has_split:
        test_dir = next((folder / d for d in ("test", "val") if (folder / d).is_dir()), None)
        if test_dir is None:
            raise DatasetNotFoundError(f"{folder}/train exists but neither {folder}/test nor {folder}/val does")
        train_images, train_labels, classes = _decode_folder(folder / "train", image_size, channels)
        test_images, test_labels, _ = _decode_folder(test_dir, image_size, channels, classes)
    else:
        all_images, all_labels, classes = _decode_folder(folder, image_size, channels)
        n_test = max(1, int(round(0.2 * len(all_labels))))
        rest, test_idx = split_indices(len(all_labels), n_test, seed)
        train_images, train_labels = all_images[rest], all_labels[rest]
        test_images, test_labels = all_images[test_idx], all_labels[test_idx]
    if mean is None or std is None:
        pixels = train_images.float().div(255).transpose(0, 1).reshape(channels, -1)
        mean, std = pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-6).tolist()
    name = f"folder:{folder}"
    if split == "test":
        return _take_subset(ImageTensorDataset(test_images, test_labels, classes, mean, std, name, "test"), subset, seed)
    dataset = ImageTensorDataset(train_images, train_labels, classes, mean, std, name, split)
    return _take_subset(_train_val_split(dataset, split, val_size, seed), subset, seed)
