import pytest
import torch
from scipy.stats import chi2_contingency
from torchvision.transforms import v2

from vitlab.augment import get_augmentation, random_affine, random_crop, random_hflip


def test_shapes_and_dtype_preserved():
    images = torch.randn(16, 3, 32, 32)
    for name in ("digits", "crop", "cifar"):
        out = get_augmentation(name)(images)
        assert out.shape == images.shape and out.dtype == images.dtype
    assert get_augmentation("none") is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        get_augmentation("mixup")


def test_random_crop_is_a_per_image_shift():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    torch.manual_seed(0)
    out = random_crop(images, padding=2, fill=0.0)
    for i in range(2):
        found = False
        padded = torch.nn.functional.pad(images[i], (2, 2, 2, 2))
        for dy in range(5):
            for dx in range(5):
                found |= torch.equal(out[i], padded[:, dy:dy + 6, dx:dx + 6])
        assert found, "each output must be one window of the padded image"


def test_hflip_probabilities():
    images = torch.randn(8, 1, 4, 4)
    assert torch.equal(random_hflip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_hflip(images, p=0.0), images)


def test_affine_identity_and_background():
    images = torch.rand(4, 1, 28, 28)
    same = random_affine(images, degrees=0.0, translate=0.0, scale=(1.0, 1.0))
    assert torch.allclose(same, images, atol=1e-5)
    torch.manual_seed(0)
    background = torch.full((2, 1, 28, 28), -0.42)
    moved = random_affine(background, degrees=30.0, translate=0.2)
    assert torch.allclose(moved, background, atol=1e-6), "pixels moved in from outside take the background value"


def test_cifar_strong_pipeline_runs_on_uint8_then_float():
    from vitlab.augment import Pipeline
    from vitlab.data import BatchLoader, ImageTensorDataset

    pipeline = get_augmentation("cifar-strong")
    assert isinstance(pipeline, Pipeline) and pipeline.before is not None
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    dataset = ImageTensorDataset(images, torch.zeros(16, dtype=torch.long), ["x"], (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    batch, _ = next(iter(BatchLoader(dataset, 16, augment=pipeline)))
    assert batch.shape == (16, 3, 32, 32) and batch.dtype == torch.float32
    assert not torch.allclose(batch, dataset.normalized())


def _offsets(cropped: torch.Tensor, side: int, padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (dy, dx) each crop of an ``arange`` image took, read from its centre pixel (always inside)."""
    centre = cropped[:, 0, side // 2, side // 2].long()
    return centre // side - side // 2 + padding, centre % side - side // 2 + padding


def test_batched_crop_and_flip_match_torchvisions_per_image_distribution():
    """The batched path (whole uint8 batches on the training device, the GPU path when the data lives on CUDA)
    draws the same crops and flips as torchvision's per-image CPU transforms: chi-square two-sample tests on the
    9 x 9 offsets and on the flips of 4,000 images each, on CPU tensors."""
    side, padding, n = 16, 4, 4000
    image = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side)
    torch.manual_seed(0)
    batched = random_crop(image.expand(n, -1, -1, -1).contiguous(), padding, fill=-1.0)
    per_image = torch.cat([v2.RandomCrop(side, padding=padding, fill=-1.0)(image[0])[None] for _ in range(n)])
    counts = []
    for crops in (batched, per_image):
        dy, dx = _offsets(crops, side, padding)
        assert dy.min() >= 0 and dy.max() <= 2 * padding and dx.min() >= 0 and dx.max() <= 2 * padding
        counts.append(torch.bincount(dy * (2 * padding + 1) + dx, minlength=(2 * padding + 1) ** 2).tolist())
    assert chi2_contingency(counts).pvalue > 1e-3
    flipped = [(random_hflip(image.expand(n, -1, -1, -1))[:, 0, 0, 0] != 0).sum().item(),
               sum(int(v2.RandomHorizontalFlip()(image[0])[0, 0, 0] != 0) for _ in range(n))]
    assert chi2_contingency([[f, n - f] for f in flipped]).pvalue > 1e-3
