import errno
import json
import os
import shutil
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import vitlab
import vitlab.data
import vitlab.data.datasets
from conftest import skip_or_fail
from vitlab.data import (
    DATASETS,
    BatchLoader,
    CorruptImageError,
    DatasetNotFoundError,
    ImageTensorDataset,
    cache_dir,
    data_root,
    load_dataset,
    load_image_folder,
    normalize,
    split_indices,
)

CIFAR10_CLASSES = list(DATASETS["cifar10"].classes)


def _require_tree(folder: str) -> None:
    """Skip when ``<data root>/<folder>/{train,test}`` is missing; in CI (``CI`` set), fail instead."""
    root = data_root()
    if not ((root / folder / "train").is_dir() and (root / folder / "test").is_dir()):
        skip_or_fail(folder)


@pytest.fixture
def cifar10_jpg_available() -> None:
    """The full CIFAR-10 JPEG tree, and no torchvision files that would take precedence over it."""
    if (data_root() / DATASETS["cifar10"].torchvision_folder).exists():
        pytest.skip("torchvision's CIFAR-10 files are present, so load_dataset('cifar10') reads those")
    _require_tree("cifar10-jpg")


@pytest.fixture
def cifar10_subset_available() -> None:
    _require_tree("cifar10-png")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Iterator[Path]:
    """An empty decode cache in ``tmp_path`` and an empty in-process split cache (restored empty after)."""
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    vitlab.data.datasets._load_split.cache_clear()
    yield tmp_path / "cache"
    vitlab.data.datasets._load_split.cache_clear()


def _save_images(folder: Path, colors: list[tuple[int, int, int]], ext: str = "png", size: int = 32) -> None:
    """One ``size``-square image per colour, ``folder/0.<ext>``, ``folder/1.<ext>``, ..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        Image.new("RGB", (size, size), color).save(folder / f"{i}.{ext}")


def _toy_cifar_tree(root: Path, folder: str, ext: str) -> None:
    """``root/folder/{train,test}/{airplane,truck}/``: two solid images per class (red airplanes, blue trucks)."""
    for split in ("train", "test"):
        _save_images(root / folder / split / "airplane", [(250, 0, 0), (200, 0, 0)], ext)
        _save_images(root / folder / split / "truck", [(0, 0, 250), (0, 0, 200)], ext)


def _cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def test_missing_dataset_without_download_names_dir_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "train", root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "VITLAB_DATA" in message and "python -m vitlab download mnist" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_offline_download_gives_one_clear_error(tmp_path, monkeypatch):
    """Simulate no network: urllib fails the way it does on an offline machine."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "test", root=tmp_path / "nothing-here", download=True)
    message = str(info.value)
    assert "download failed" in message and "Name or service not known" in message
    assert str(tmp_path / "nothing-here" / "MNIST" / "raw") in message
    assert "\n" not in message.splitlines()[0]
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_cifar_missing_lists_every_folder_searched_in_order(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    searched = str(info.value).splitlines()[1]
    folders = [str(tmp_path / f) for f in ("cifar-10-batches-py", "cifar10-jpg", "cifar10-png")]
    assert all(f in searched for f in folders)
    assert [searched.index(f) for f in folders] == sorted(searched.index(f) for f in folders)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10-subset", "test", root=tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / "cifar10-png") in message and "cifar10-jpg" not in message
    assert "vitlab download" not in message  # nothing to download: it is a fixed subset of files


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("mnist", "validation")


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert data_root(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv("VITLAB_DATA")
    assert data_root().name == "data"


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(100, 10, seed=5)
    assert len(train) == 90 and len(val) == 10
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert torch.equal(split_indices(100, 10, seed=5)[1], val)
    assert not torch.equal(split_indices(100, 10, seed=6)[1], val)


def _toy(n: int = 10) -> ImageTensorDataset:
    images = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2)
    # Label i for sample i, so tests can see exactly which samples a loader yields.
    return ImageTensorDataset(images, torch.arange(n), [str(i) for i in range(n)], (0.5,), (0.25,), "toy", "train")


def test_normalize():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert normalize(images, (0.5,), (0.5,)).flatten().tolist() == [-1.0, 1.0]


def test_batch_loader_covers_every_sample_once_and_is_seeded():
    dataset = _toy(10)
    loader = BatchLoader(dataset, 3, shuffle=True, seed=1)
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 4 and sorted(labels.tolist()) == list(range(10))
    first = [y.tolist() for _, y in BatchLoader(dataset, 3, shuffle=True, seed=1)]
    again = [y.tolist() for _, y in BatchLoader(dataset, 3, shuffle=True, seed=1)]
    assert first == again
    loader.set_epoch(1)
    assert [y.tolist() for _, y in loader] != first
    images, _ = next(iter(BatchLoader(dataset, 10)))
    assert torch.allclose(images, dataset.normalized())
    assert images.dtype == torch.float32


def test_batch_loader_shards_are_disjoint():
    dataset = _toy(10)
    seen = []
    for rank in range(2):
        loader = BatchLoader(dataset, 2, shuffle=True, seed=0, rank=rank, world_size=2)
        seen.append({int(label) for _, labels in loader for label in labels})
    assert seen[0].isdisjoint(seen[1]) and len(seen[0]) == len(seen[1]) == 5


def test_image_folder(tmp_path, fresh_cache):
    from PIL import Image

    for split, per_class in (("train", 6), ("test", 2)):
        for label, color in enumerate([(255, 0, 0), (0, 0, 255)]):
            folder = tmp_path / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (20, 10), color).save(folder / f"{i}.png")
    train = load_image_folder(tmp_path, "train", image_size=16, val_size=2, seed=0)
    val = load_image_folder(tmp_path, "val", image_size=16, val_size=2, seed=0)
    test = load_dataset(f"folder:{tmp_path}", "test", image_size=16)
    assert train.images.shape == (10, 3, 16, 16) and len(val) == 2 and len(test) == 4
    assert train.classes == ["class0", "class1"]
    red = train.images[train.labels == 0][0]
    assert red[0].float().mean() > 250 and red[2].float().mean() < 5
    gray = load_image_folder(tmp_path, "test", image_size=8, channels=1)
    assert gray.images.shape == (4, 1, 8, 8)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


@pytest.mark.usefixtures("mnist_available")
def test_mnist_loads_with_documented_shapes_and_split():
    train = load_dataset("mnist", "train")
    val = load_dataset("mnist", "val")
    test = load_dataset("mnist", "test")
    assert (len(train), len(val), len(test)) == (54000, 6000, 10000)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert test.class_counts().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    small = load_dataset("mnist", "train", subset=500, seed=3)
    assert len(small) == 500 and torch.equal(small.images, load_dataset("mnist", "train", subset=500, seed=3).images)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_dataset_statistics_constants_match_the_data(name, request):
    request.getfixturevalue("mnist_available" if name == "mnist" else "fashion_available")
    full = load_dataset(name, "train+val")
    pixels = full.images.float().div(255)
    info = DATASETS[name]
    assert pixels.mean().item() == pytest.approx(info.mean[0], abs=5e-4)
    assert pixels.std().item() == pytest.approx(info.std[0], abs=5e-4)


@pytest.mark.usefixtures("cifar10_available")
def test_cifar10_statistics_close_to_constants():
    """Local copies are JPEG-derived (full set or subset), so only approximate agreement is expected."""
    full = load_dataset("cifar10", "train+val")
    assert full.images.shape[1:] == (3, 32, 32)
    # From per-channel histograms of the uint8 pixels: exact, and no 600 MB float copy of 50,000 images.
    counts = torch.stack([torch.bincount(full.images[:, c].reshape(-1), minlength=256) for c in range(3)]).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = (counts * values).sum(1) / counts.sum(1)
    std = ((counts * values**2).sum(1) / counts.sum(1) - mean**2).sqrt()
    info = DATASETS["cifar10"]
    assert torch.allclose(mean, torch.tensor(info.mean, dtype=torch.float64), atol=0.01)
    assert torch.allclose(std, torch.tensor(info.std, dtype=torch.float64), atol=0.01)
    assert full.classes[3] == "cat"


# --------------------------------------------------------------------------- full CIFAR-10 and its subset
# These read the real data through the user's cache folder (not a temporary one), so CI decodes the
# 60,000 JPEGs once and later runs load the cached arrays.


@pytest.mark.usefixtures("cifar10_jpg_available")
def test_cifar10_loads_the_full_jpeg_test_set():
    test = load_dataset("cifar10", "test")
    assert test.images.shape == (10000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.class_counts().tolist() == [1000] * 10 and test.classes == CIFAR10_CLASSES
    assert test.source == f"cifar10-jpg at {data_root() / 'cifar10-jpg'} (full)"
    assert test.source in repr(test)
    assert test.subset(torch.arange(5)).source == test.source


@pytest.mark.usefixtures("cifar10_jpg_available")
def test_cifar10_full_training_set_splits_into_train_and_val():
    train, val = load_dataset("cifar10", "train"), load_dataset("cifar10", "val")
    assert (len(train), len(val)) == (45000, 5000)
    assert load_dataset("cifar10", "train+val").class_counts().tolist() == [5000] * 10
    assert train.source == val.source and "(full)" in train.source


@pytest.mark.usefixtures("cifar10_subset_available")
def test_cifar10_subset_is_exactly_the_png_subset():
    subset = load_dataset("cifar10-subset", "test")
    assert subset.images.shape == (2000, 3, 32, 32) and subset.class_counts().tolist() == [200] * 10
    assert subset.name == "cifar10-subset" and subset.classes == CIFAR10_CLASSES
    assert (subset.mean, subset.std) == (DATASETS["cifar10"].mean, DATASETS["cifar10"].std)
    assert subset.source == f"cifar10-png at {data_root() / 'cifar10-png'} (subset)"
    if (data_root() / "cifar10-jpg" / "test").is_dir() and not (data_root() / "cifar-10-batches-py").exists():
        # <n>.png is the decoded <n:04d>.jpg; files load in name order, so 0, 1, 10, 100, 101, ... for the PNGs.
        full = load_dataset("cifar10", "test")
        png_order = sorted(range(200), key=lambda n: f"{n}.png")
        for label in range(10):
            assert torch.equal(subset.images[subset.labels == label], full.images[full.labels == label][png_order])


# --------------------------------------------------------------------------- search order and the decode cache
# Small synthetic image trees in tmp_path, with a temporary cache folder.


def test_cifar10_search_order_and_source(tmp_path, fresh_cache):
    _toy_cifar_tree(tmp_path, "cifar10-png", "png")
    only_png = load_dataset("cifar10", "test", root=tmp_path)
    assert only_png.source == f"cifar10-png at {tmp_path / 'cifar10-png'} (subset)"
    assert only_png.labels.tolist() == [0, 0, 9, 9]  # CIFAR-10's class indices, not the folders' order
    _toy_cifar_tree(tmp_path, "cifar10-jpg", "jpg")
    vitlab.data.datasets._load_split.cache_clear()
    both = load_dataset("cifar10", "test", root=tmp_path)
    assert both.source == f"cifar10-jpg at {tmp_path / 'cifar10-jpg'} (full)" and both.name == "cifar10"
    assert load_dataset("cifar10-subset", "test", root=tmp_path).source == only_png.source


def test_second_load_reads_the_cache_file_instead_of_decoding(tmp_path, fresh_cache, monkeypatch):
    _toy_cifar_tree(tmp_path, "cifar10-jpg", "jpg")
    first = load_dataset("cifar10", "test", root=tmp_path)
    assert cache_dir() == fresh_cache.resolve()
    [cached] = _cache_files(fresh_cache)
    from safetensors import safe_open

    with safe_open(str(cached), framework="pt") as f:
        assert json.loads(f.metadata()["classes"]) == CIFAR10_CLASSES and f.metadata()["fingerprint"]
        assert f.get_tensor("images").dtype == torch.uint8 and f.get_tensor("labels").dtype == torch.int64

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(vitlab.data.datasets, "_decode_images", no_decoding)
    vitlab.data.datasets._load_split.cache_clear()  # as a new process would
    second = load_dataset("cifar10", "test", root=tmp_path)
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert second.source == first.source and second.classes == first.classes


def _pets(tree: Path, cats: list[tuple[int, int, int]], dogs: list[tuple[int, int, int]]) -> None:
    """``tree/train/{cat,dog}/<i>.png`` with the given colours, and a one-image-per-class ``tree/test``."""
    _save_images(tree / "train" / "cat", cats, size=8)
    _save_images(tree / "train" / "dog", dogs, size=8)
    _save_images(tree / "test" / "cat", cats[:1], size=8)
    _save_images(tree / "test" / "dog", dogs[:1], size=8)


def test_cache_is_rebuilt_when_a_source_file_changes(tmp_path, fresh_cache):
    tree = tmp_path / "pets"
    _pets(tree, [(255, 0, 0), (255, 0, 0)], [(0, 255, 0), (0, 255, 0)])
    before = load_image_folder(tree, "train+val", image_size=8)
    assert before.source == f"image folder {tree}" and before.labels.tolist() == [0, 0, 1, 1]
    assert len(_cache_files(fresh_cache)) == 2  # train and test
    changed = tree / "train" / "cat" / "1.png"
    mtime = changed.stat().st_mtime_ns
    _save_images(tree / "train" / "cat", [(255, 0, 0), (0, 0, 255)], size=8)  # 1.png turns blue
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))  # a distinct mtime even on a coarse-clock filesystem
    after = load_image_folder(tree, "train+val", image_size=8)
    assert before.images[1, 2].float().mean() < 5 and after.images[1, 2].float().mean() > 250
    _save_images(tree / "train" / "dog", [(0, 255, 0)] * 3, size=8)  # one file more
    assert load_image_folder(tree, "train+val", image_size=8).labels.tolist() == [0, 0, 1, 1, 1]
    assert len(_cache_files(fresh_cache)) == 2  # one file per folder and settings, overwritten in place
    load_image_folder(tree, "train+val", image_size=4)
    assert len(_cache_files(fresh_cache)) == 4  # another image size is another cache entry


def test_unreadable_cache_file_is_decoded_again(tmp_path, fresh_cache):
    tree = tmp_path / "pets"
    _pets(tree, [(255, 0, 0)], [(0, 255, 0)])
    expected = load_image_folder(tree, "train+val").images
    for cached in _cache_files(fresh_cache):
        cached.write_bytes(b"not a safetensors file")
    assert torch.equal(load_image_folder(tree, "train+val").images, expected)
    assert all(cached.stat().st_size > 100 for cached in _cache_files(fresh_cache))  # rewritten


def test_unwritable_cache_folder_still_loads_and_warns_once(tmp_path, monkeypatch):
    tree = tmp_path / "pets"
    _pets(tree, [(255, 0, 0)], [(0, 255, 0)])
    blocker = tmp_path / "a-file"
    blocker.write_text("no cache folder can be created under a file (unlike chmod, this also holds for root)")
    monkeypatch.setenv("VITLAB_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write the decoded-image cache") as caught:
        dataset = load_image_folder(tree, "train+val")
    assert len(caught) == 1 and "VITLAB_CACHE" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line, not at vitlab's internals
    assert dataset.labels.tolist() == [0, 1] and dataset.images.shape == (2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert torch.equal(load_image_folder(tree, "train+val").images, dataset.images)
    assert not [w for w in again if "cache" in str(w.message)]


def test_cache_files_of_deleted_folders_are_pruned(tmp_path, fresh_cache):
    gone, kept = tmp_path / "temporary", tmp_path / "kept"
    _pets(gone, [(255, 0, 0)], [(0, 255, 0)])
    _pets(kept, [(255, 0, 0)], [(0, 255, 0)])
    load_image_folder(gone, "train+val")
    load_image_folder(kept, "train+val")
    foreign = fresh_cache / "model.safetensors"  # not vitlab's: never touched
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(foreign))
    assert len(_cache_files(fresh_cache)) == 5
    shutil.rmtree(gone)
    _save_images(kept / "train" / "cat", [(255, 0, 0), (250, 0, 0)], size=8)  # a change: the next load writes
    load_image_folder(kept, "train+val")
    assert len(_cache_files(fresh_cache)) == 3 and foreign.exists()
    assert not any("temporary" in p.name for p in _cache_files(fresh_cache))


def test_cache_write_failure_leaves_no_temporary_file(tmp_path, fresh_cache, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    tree = tmp_path / "pets"
    _pets(tree, [(255, 0, 0)], [(0, 255, 0)])
    with pytest.warns(UserWarning, match="No space left on device"):
        assert len(load_image_folder(tree, "train+val")) == 2
    assert fresh_cache.is_dir() and list(fresh_cache.iterdir()) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_file_is_a_clear_error_naming_it(tmp_path, fresh_cache, damage):
    tree = tmp_path / "pets"
    _save_images(tree / "cat", [(255, 0, 0), (250, 0, 0)], ext="jpg")
    broken = tree / "cat" / "1.jpg"
    broken.write_bytes(b"this is no image" if damage == "garbage" else broken.read_bytes()[:200])
    with pytest.raises(CorruptImageError) as info:
        load_dataset(f"folder:{tree}", "test")
    assert isinstance(info.value, ValueError)
    assert str(broken) in str(info.value) and "remove or replace" in str(info.value).lower()
    assert _cache_files(fresh_cache) == []  # nothing half-decoded was cached


# ------------------------------------------------------------------------- photos: shapes, orientation, balance
def _photo(path: Path, size: tuple[int, int], sideways: bool = False) -> None:
    """A JPEG whose upright picture (``size``: width, height) is red on its left half and blue on its right;
    ``sideways`` stores it turned 90 degrees counter-clockwise with the EXIF tag that says so (orientation 6,
    what a phone writes for a portrait photo)."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2:, 2] = 255
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if sideways:
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif[0x0112] = 6  # the Orientation tag: display rotated 90 degrees clockwise
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif, quality=100)


def test_fit_image_crops_squashes_or_pads_a_long_picture() -> None:
    from vitlab.data import fit_image

    wide = Image.fromarray(np.concatenate([np.full((20, 20, 3), 200, np.uint8), np.zeros((20, 40, 3), np.uint8)], 1))
    crop, squash, pad = (np.asarray(fit_image(wide, 10, mode)) for mode in ("crop", "squash", "pad"))
    assert crop.shape == squash.shape == pad.shape == (10, 10, 3)
    assert crop.max() < 100                             # the centre of a 60x20 picture: only its dark part
    assert squash[:, 0].min() > 150 and squash[:, -1].max() < 50  # squashed: bright left third, dark right
    assert pad[0].max() == 0 and pad[-1].max() == 0 and pad[5, 0].min() > 150  # black bars above and below
    assert np.asarray(fit_image(Image.fromarray(crop), 10, "crop")).tobytes() == crop.tobytes()  # right size: as is
    with pytest.raises(ValueError, match="resize mode"):
        fit_image(wide, 10, "stretch")


def test_folder_photos_are_turned_upright_as_their_exif_says(tmp_path: Path) -> None:
    _photo(tmp_path / "pool" / "a" / "upright.jpg", (32, 16))
    _photo(tmp_path / "pool" / "a" / "tagged.jpg", (32, 16), sideways=True)
    for i in range(3):
        _photo(tmp_path / "pool" / "b" / f"{i}.jpg", (32, 16))
    data = load_image_folder(tmp_path / "pool", "train+val", image_size=16, resize="squash", stratify=False)
    test = load_image_folder(tmp_path / "pool", "test", image_size=16, resize="squash", stratify=False)
    images = torch.cat([data.images, test.images])
    raw = np.asarray(Image.open(tmp_path / "pool" / "a" / "tagged.jpg").convert("RGB"))
    assert raw.shape == (32, 16, 3)                  # what Pillow reads without the tag: lying on its side
    # Upright, every picture shows red on the left, blue on the right: the tagged one too.
    assert all(img[0, :, :8].float().mean() > 200 and img[2, :, 8:].float().mean() > 200 for img in images)


def test_stratified_split_keeps_every_class_share() -> None:
    from vitlab.data import stratified_split_indices

    labels = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    train, val = stratified_split_indices(labels, 20, seed=3)
    assert len(val) == 20 and len(train) == 80 and set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(labels[val], minlength=3).tolist() == [16, 3, 1]    # 20 % of each class
    again = stratified_split_indices(labels, 20, seed=3)
    assert torch.equal(again[1], val) and not torch.equal(stratified_split_indices(labels, 20, seed=4)[1], val)
    _, odd = stratified_split_indices(labels, 7, seed=0)                       # 5.6 / 1.05 / 0.35: largest remainder
    assert len(odd) == 7 and torch.bincount(labels[odd], minlength=3).tolist() == [6, 1, 0]


def test_a_run_on_a_folder_records_and_reloads_its_resize_and_split(tmp_path: Path) -> None:
    from vitlab.runfolder import Run

    for kind, count in (("big", 30), ("small", 6)):
        for i in range(count):
            _photo(tmp_path / "imbalanced" / kind / f"{i}.jpg", (48, 24) if i % 2 else (24, 48))
    common = dict(image_size=16, channels=3, val_size=0.2, seed=1)
    test = load_image_folder(tmp_path / "imbalanced", "test", **common)
    assert torch.bincount(test.labels).tolist() == [6, 1]  # 20 % of 36 = 7: the small class is in the test set
    run = vitlab.train_run("simple_cnn", f"folder:{tmp_path / 'imbalanced'}", tmp_path / "run", resize="pad",
                           model_args={"image_size": 16, "in_channels": 3}, recipe={"epochs": 1, "batch_size": 8, "precision": "fp32"},
                           seed=1, progress=False, verbose=False)
    record = run.record()
    assert record.dataset.resize == "pad" and record.dataset.stratify is True
    padded = load_image_folder(tmp_path / "imbalanced", "test", resize="pad", **common)
    assert torch.equal(Run(run.path).dataset("test").images, padded.images)
    assert not torch.equal(padded.images, test.images)   # pad and crop differ on these long pictures


def test_noisy_labels_change_exactly_the_fraction_to_other_classes() -> None:
    labels = torch.arange(10_000) % 10
    noisy = vitlab.data.noisy_labels(labels, 0.4, 10, seed=3)
    wrong = noisy != labels
    assert wrong.sum().item() == 4_000                                   # exactly round(0.4 * N), never the true class
    assert torch.equal(noisy, vitlab.data.noisy_labels(labels, 0.4, 10, seed=3))
    assert not torch.equal(noisy, vitlab.data.noisy_labels(labels, 0.4, 10, seed=4))
    assert torch.equal(labels, torch.arange(10_000) % 10)                 # the input is not modified
    # Every other class is equally likely: the offsets 1..9 of the wrong labels, chi-square at 8 degrees of freedom.
    offsets = ((noisy[wrong] - labels[wrong]) % 10).bincount(minlength=10)[1:].double()
    expected = wrong.sum() / 9
    assert ((offsets - expected) ** 2 / expected).sum().item() < 26.1     # p = 0.001
    assert torch.equal(vitlab.data.noisy_labels(labels, 0.0, 10, seed=0), labels)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            vitlab.data.noisy_labels(labels, bad, 10, seed=0)


def test_label_noise_touches_only_the_training_labels(folder_dataset, tmp_path) -> None:
    data = f"folder:{folder_dataset(tmp_path / 'images')}"
    clean = load_dataset(data, "train", image_size=16, seed=2)
    noisy = load_dataset(data, "train", image_size=16, seed=2, label_noise=0.25)
    assert torch.equal(clean.images, noisy.images)
    assert (clean.labels != noisy.labels).sum().item() == round(0.25 * len(clean))
    assert torch.equal(load_dataset(data, "train", image_size=16, seed=2).labels, clean.labels)  # no cache poisoned
    with pytest.raises(ValueError, match="training split only"):
        load_dataset(data, "test", image_size=16, label_noise=0.25)


def test_a_run_with_label_noise_records_and_reloads_its_wrong_labels(folder_dataset, tmp_path) -> None:
    data = f"folder:{folder_dataset(tmp_path / 'images')}"
    run = vitlab.train_run("vit_seed", data, tmp_path / "run", recipe={"epochs": 1, "batch_size": 8},
                           model_args={"image_size": 16}, seed=1, label_noise=0.5, progress=False, verbose=False)
    assert run.record().dataset.label_noise == 0.5
    train = run.dataset("train")
    clean = load_dataset(data, "train", image_size=16, seed=1, val_size=0.1)
    assert (train.labels != clean.labels).sum().item() == round(0.5 * len(clean))
    assert torch.equal(run.dataset("test").labels, load_dataset(data, "test", image_size=16, seed=1).labels)
    with pytest.raises(ValueError, match="label noise"):
        vitlab.train_run("vit_seed", data, tmp_path / "bad", model_args={"image_size": 16}, label_noise=1.2,
                         progress=False, verbose=False)
