import urllib.error
import urllib.request

import pytest
import torch

from vitlab.data import (DATASETS, BatchLoader, DatasetNotFoundError, ImageTensorDataset, data_root, load_dataset,
                         load_image_folder, normalize, split_indices)


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


def test_cifar_missing_mentions_both_layouts(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar10-png"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


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


def test_image_folder(tmp_path):
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
    """The local copy is a JPEG-derived subset, so only approximate agreement is expected."""
    full = load_dataset("cifar10", "train+val")
    assert full.images.shape[1:] == (3, 32, 32)
    pixels = full.images.float().div(255).transpose(0, 1).reshape(3, -1)
    info = DATASETS["cifar10"]
    assert torch.allclose(pixels.mean(1), torch.tensor(info.mean), atol=0.01)
    assert torch.allclose(pixels.std(1), torch.tensor(info.std), atol=0.01)
    assert full.classes[3] == "cat"
