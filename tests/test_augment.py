import pytest
import torch
from scipy.stats import chi2_contingency, chisquare, ks_2samp
from torchvision.transforms import v2

from vitlab.augment import get_augmentation, random_affine, random_crop, random_hflip
from vitlab.data.augment import trivial_augment
from vitlab.data.trivial_augment import (
    NUM_MAGNITUDE_BINS,
    OPERATIONS,
    TrivialAugmentDraw,
    _magnitudes,
    apply_trivial_augment,
    batched_trivial_augment,
    draw_trivial_augment,
)


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


# --- Batched TrivialAugment (the GPU data path), checked on CPU tensors against torchvision's per-image one ---

def _cifar_like(n: int, channels: int = 3, side: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth, textured uint8 images (a random low-resolution pattern upsampled plus noise): histograms and
    edges like photographs', so that every operation changes something."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    noisy = smooth * 200 + torch.rand(n, channels, side, side, generator=g) * 55
    return noisy.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("channels,height,width", [(3, 32, 32), (1, 28, 28), (3, 24, 20)])
def test_batched_trivial_augment_equals_torchvisions_operations(channels, height, width):
    """Every operation at every strength (both signs) gives torchvision's pixels: the geometric ones exactly
    (same inverse-affine matrices, same nearest resampling, exact right-angle turns), the colour ones within one
    grey level on a few pixels (a per-image factor tensor instead of a Python float rounds a tie the other way)."""
    reference = v2.TrivialAugmentWide()
    operations, magnitudes = [], []
    for index, name in enumerate(OPERATIONS):
        table = _magnitudes(name)
        values = [0.0] if table is None else [float(v) for v in table]
        signed = name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                          "Contrast", "Sharpness")
        values += [-v for v in values if signed and v != 0]
        assert table is None or len(table) == NUM_MAGNITUDE_BINS
        operations += [index] * len(values)
        magnitudes += values
    images = _cifar_like(len(operations), channels)[..., :height, :width].contiguous()
    draw = TrivialAugmentDraw(torch.tensor(operations), torch.tensor(magnitudes, dtype=torch.float64))
    batched = apply_trivial_augment(images, draw)
    assert batched.dtype == torch.uint8 and batched.shape == images.shape
    off_by_one = 0
    for i, (operation, magnitude) in enumerate(zip(operations, magnitudes)):
        name = OPERATIONS[operation]
        expected = reference._apply_image_or_video_transform(images[i], name, magnitude,
                                                             interpolation=reference.interpolation,
                                                             fill=reference._fill)
        difference = (batched[i].int() - expected.int()).abs()
        if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Posterize", "Solarize",
                    "AutoContrast", "Equalize", "Identity"):
            assert torch.equal(batched[i], expected), (name, magnitude)
        else:
            assert difference.max() <= 1, (name, magnitude, difference.max())
            off_by_one += int((difference > 0).sum())
    changed = sum(int(not torch.equal(batched[i], images[i])) for i in range(len(operations)))
    assert changed > 0.8 * len(operations)                 # the check compared real transformations
    colour = sum(OPERATIONS[o] in ("Brightness", "Color", "Contrast", "Sharpness") for o in operations)
    assert off_by_one <= 1e-3 * colour * images[0].numel()    # under 0.1 % of the colour operations' pixels


def test_batched_trivial_augment_draws_trivial_augments_distribution():
    """The draws: each of the 14 operations with probability 1/14, each of the 31 strengths uniformly, the sign
    of a directed operation 1/2 each way (chi-square goodness of fit on 28,000 draws), from the global RNG."""
    torch.manual_seed(0)
    draw = draw_trivial_augment(28_000)
    assert chisquare(torch.bincount(draw.operation, minlength=14).tolist()).pvalue > 1e-3
    signed = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
              "Sharpness"}                                        # torchvision's _AUGMENTATION_SPACE flags
    for index, name in enumerate(OPERATIONS):
        drawn = draw.magnitude[draw.operation == index]
        table = _magnitudes(name)
        if table is None:
            assert (drawn == 0).all(), name
            continue
        table = table.double()
        # Every strength is one of the table's 31 levels, each level drawn equally often (Posterize's table
        # repeats values: a value's share is its count in the table over 31).
        values, per_level = table.unique(return_counts=True)
        level = (drawn.abs()[:, None] - values[None]).abs().argmin(1)
        assert torch.equal(values[level], drawn.abs()), name
        expected = per_level.double() / NUM_MAGNITUDE_BINS * len(drawn)
        observed = torch.bincount(level, minlength=len(values))
        assert chisquare(observed.tolist(), expected.tolist()).pvalue > 1e-4, name
        nonzero = drawn[drawn != 0]
        if name in signed:   # both signs, half and half
            assert chisquare([int((nonzero > 0).sum()), int((nonzero < 0).sum())]).pvalue > 1e-4, name
        else:
            assert (drawn >= 0).all(), name
    torch.manual_seed(0)
    assert torch.equal(draw_trivial_augment(28_000).magnitude, draw.magnitude)     # seed fixes it


def test_batched_trivial_augment_matches_torchvision_in_distribution():
    """End to end, the two paths are the same random transformation: on one batch of images augmented 40 times
    each way, the share of images left unchanged and the distribution of how far each image moved (mean absolute
    change, two-sample Kolmogorov-Smirnov) agree; and the batched path is seeded."""
    images = _cifar_like(64)
    torch.manual_seed(1)
    batched = torch.cat([batched_trivial_augment(images) for _ in range(40)])
    torch.manual_seed(2)
    per_image = torch.cat([trivial_augment(images) for _ in range(40)])      # torchvision, one image at a time
    reference = images.repeat(40, 1, 1, 1)
    moved = [(out.float() - reference.float()).abs().mean(dim=(1, 2, 3)) for out in (batched, per_image)]
    unchanged = [int((m == 0).sum()) for m in moved]
    assert chi2_contingency([[u, len(reference) - u] for u in unchanged]).pvalue > 1e-3
    assert ks_2samp(moved[0].numpy(), moved[1].numpy()).pvalue > 1e-3
    torch.manual_seed(1)
    assert torch.equal(batched_trivial_augment(images), batched[:64])


def test_batched_trivial_augment_refuses_float_or_odd_batches():

    with pytest.raises(ValueError, match="uint8"):
        batched_trivial_augment(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        batched_trivial_augment(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"operation indices must lie in \[0, 14\)"):
        TrivialAugmentDraw(torch.tensor([0, -1]), torch.zeros(2))
    with pytest.raises(ValueError, match="3 draws for 2 images"):
        apply_trivial_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                              TrivialAugmentDraw(torch.zeros(3), torch.zeros(3)))


def test_trivial_augment_picks_the_batched_path_off_the_cpu_only():
    """``trivial_augment`` keeps torchvision's per-image loop on the CPU (recorded runs replay exactly) and takes
    the batched one when asked (as on a GPU, where it is the default); a group size other than 1 is refused there."""
    images = _cifar_like(16)
    torch.manual_seed(3)
    expected = batched_trivial_augment(images)
    torch.manual_seed(3)
    assert torch.equal(trivial_augment(images, batched=True), expected)
    torch.manual_seed(3)
    op = v2.TrivialAugmentWide()
    per_image = torch.cat([op(image[None]) for image in images])
    torch.manual_seed(3)
    assert torch.equal(trivial_augment(images), per_image)
    with pytest.raises(ValueError, match="group=1"):
        trivial_augment(images, group=4, batched=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the batched path's home)")
def test_batched_trivial_augment_on_cuda_equals_the_cpu_path():
    """On CUDA ``trivial_augment`` takes the batched path by default, draws the same operations as on the CPU
    (they are drawn on the CPU) and gives the same pixels: geometric ones exactly, colour ones within a grey level."""
    images = _cifar_like(512)
    torch.manual_seed(4)
    on_cpu = batched_trivial_augment(images)
    torch.manual_seed(4)
    on_gpu = trivial_augment(images.cuda()).cpu()
    assert (on_gpu.int() - on_cpu.int()).abs().max() <= 1
    assert (on_gpu != on_cpu).float().mean() < 1e-3
