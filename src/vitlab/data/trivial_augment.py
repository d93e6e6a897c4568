"""TrivialAugment for whole batches at once: the GPU data path's version of torchvision's ``TrivialAugmentWide``.

TrivialAugment (Müller & Hutter 2021) gives every image one operation, drawn uniformly from 14, at a strength
drawn uniformly from 31 levels (and a random sign where the operation has a direction). torchvision applies it
to one image per call; on a GPU that is a few dozen small kernels per image, launched from Python, a few
thousand per batch, and the training step ends up waiting for them. Here the random choices are drawn for the
whole batch at once (on the CPU, so the host never waits for the device), the images are grouped by
operation, and each group is transformed in one go with a per-image strength: about 20 calls per batch,
whatever its size.

It is the same augmentation, not an approximation of it: the same operations, the same 31 strengths with the
same formulas (torchvision's ``_AUGMENTATION_SPACE``), nearest-neighbour resampling with black fill. Geometric
operations build the same inverse-affine matrices in double precision and so give the same pixels; the
colour operations blend with a per-image factor where torchvision uses a Python float, which can round a
handful of pixels the other way (by one grey level). ``tests/test_augment.py`` checks both, and that the
draws follow TrivialAugment's distribution.

:func:`vitlab.data.augment.trivial_augment` uses this on CUDA (or when asked); on the CPU it keeps
torchvision's per-image loop, so the recorded CPU runs replay exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = ["OPERATIONS", "NUM_MAGNITUDE_BINS", "TrivialAugmentDraw", "draw_trivial_augment",
           "apply_trivial_augment", "batched_trivial_augment"]

#: TrivialAugmentWide's 14 operations, in torchvision's order.
OPERATIONS: tuple[str, ...] = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                               "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NUM_MAGNITUDE_BINS = 31
#: Operations whose strength has a sign (drawn with probability 1/2 each way).
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
_AFFINE = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLEND = ("Brightness", "Color", "Contrast", "Sharpness")


def _magnitudes(operation: str, bins: int = NUM_MAGNITUDE_BINS) -> Tensor | None:
    """The strengths of one operation, exactly as torchvision tabulates them (float32), or ``None``."""
    table = {
        "ShearX": lambda: torch.linspace(0.0, 0.99, bins), "ShearY": lambda: torch.linspace(0.0, 0.99, bins),
        "TranslateX": lambda: torch.linspace(0.0, 32.0, bins), "TranslateY": lambda: torch.linspace(0.0, 32.0, bins),
        "Rotate": lambda: torch.linspace(0.0, 135.0, bins),
        "Brightness": lambda: torch.linspace(0.0, 0.99, bins), "Color": lambda: torch.linspace(0.0, 0.99, bins),
        "Contrast": lambda: torch.linspace(0.0, 0.99, bins), "Sharpness": lambda: torch.linspace(0.0, 0.99, bins),
        "Posterize": lambda: (8 - (torch.arange(bins) / ((bins - 1) / 6))).round().int(),
        "Solarize": lambda: torch.linspace(1.0, 0.0, bins),
    }
    return table[operation]() if operation in table else None


class TrivialAugmentDraw:
    """One batch's random choices: ``operation`` (N,) indices into :data:`OPERATIONS` and ``magnitude`` (N,)
    float64 signed strengths (0 for the operations without one), both on the CPU."""

    def __init__(self, operation: Tensor, magnitude: Tensor) -> None:
        if operation.shape != magnitude.shape or operation.ndim != 1:
            raise ValueError(f"operation and magnitude must be two (N,) tensors, got {tuple(operation.shape)} "
                             f"and {tuple(magnitude.shape)}")
        self.operation = operation.long().cpu()
        self.magnitude = magnitude.double().cpu()

    def __len__(self) -> int:
        return len(self.operation)


def draw_trivial_augment(n: int, generator: torch.Generator | None = None) -> TrivialAugmentDraw:
    """Draw TrivialAugmentWide's choices for ``n`` images: an operation uniformly from the 14, a strength
    uniformly from its 31 levels, a sign with probability 1/2 each (torchvision's ``rand() <= 0.5``).
    Drawn on the CPU from ``generator`` (default: PyTorch's global one, so ``seed`` fixes them)."""
    operation = torch.randint(len(OPERATIONS), (n,), generator=generator)
    level = torch.randint(NUM_MAGNITUDE_BINS, (n,), generator=generator)
    negative = torch.rand(n, generator=generator, dtype=torch.float64) <= 0.5
    magnitude = torch.zeros(n, dtype=torch.float64)
    for index, name in enumerate(OPERATIONS):
        table = _magnitudes(name)
        chosen = operation == index
        if table is None or not chosen.any():
            continue
        values = table.double()[level[chosen]]
        if name in _SIGNED:
            values = torch.where(negative[chosen], -values, values)
        magnitude[chosen] = values
    return TrivialAugmentDraw(operation, magnitude)


def _inverse_affine(operation: str, magnitude: float, height: int, width: int) -> list[float]:
    """The inverse affine matrix torchvision's ``affine``/``rotate`` build for one image (same double-precision
    formulas, so the same pixels come out). Shears are centred on the top-left corner, as in AutoAugment."""
    angle, tx, ty, shear_x, shear_y = 0.0, 0.0, 0.0, 0.0, 0.0
    cx, cy = 0.0, 0.0
    if operation == "ShearX":
        shear_x, cx, cy = math.degrees(math.atan(magnitude)), -width * 0.5, -height * 0.5
    elif operation == "ShearY":
        shear_y, cx, cy = math.degrees(math.atan(magnitude)), -width * 0.5, -height * 0.5
    elif operation == "TranslateX":
        tx = float(int(magnitude))
    elif operation == "TranslateY":
        ty = float(int(magnitude))
    else:  # Rotate: torchvision's rotate inverts the angle
        angle = -(magnitude % 360)
    rot, sx, sy = math.radians(angle), math.radians(shear_x), math.radians(shear_y)
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += cx - matrix[0] * (cx + tx) - matrix[1] * (cy + ty)
    matrix[5] += cy - matrix[3] * (cx + tx) - matrix[4] * (cy + ty)
    return matrix


def _affine(images: Tensor, matrices: list[list[float]]) -> Tensor:
    """Resample each image with its own inverse affine matrix: nearest neighbour, black outside.
    ``(N, C, H, W) uint8 -> (N, C, H, W) uint8``."""
    n, _, height, width = images.shape
    device = images.device
    theta = torch.tensor(matrices, dtype=torch.float32).reshape(n, 2, 3).to(device, non_blocking=True)
    base = torch.empty(1, height, width, 3, dtype=torch.float32, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height,
                                      device=device).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * width, 0.5 * height], dtype=torch.float32, device=device)
    grid = base.view(1, height * width, 3).expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale)
    out = F.grid_sample(images.float(), grid.view(n, height, width, 2), mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.round_().to(torch.uint8)


def _grayscale(images: Tensor) -> Tensor:
    """torchvision's luma, floored: ``(N, 3, H, W) uint8 -> (N, 1, H, W) float32``."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze_(-3).floor_()


def _blend(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``ratio * images + (1 - ratio) * other`` per image, clamped to 0-255. ``ratio``: (N,) float64."""
    weight = ratio.to(torch.float32).view(-1, 1, 1, 1)
    rest = (1.0 - ratio).to(torch.float32).view(-1, 1, 1, 1)
    return images.float().mul_(weight).add_(other * rest).clamp_(0, 255).to(torch.uint8)


def _color_operation(name: str, images: Tensor, factor: Tensor) -> Tensor:
    """Brightness, Color (saturation), Contrast or Sharpness with a per-image ``factor`` (N,) float64 on the
    images' device. ``(N, C, H, W) uint8 -> (N, C, H, W) uint8``."""
    channels = images.shape[-3]
    if name == "Brightness":
        return images.float().mul_(factor.to(torch.float32).view(-1, 1, 1, 1)).clamp_(0, 255).to(torch.uint8)
    if name == "Color":
        return images if channels == 1 else _blend(images, _grayscale(images), factor)
    if name == "Contrast":
        gray = _grayscale(images) if channels == 3 else images.float()
        return _blend(images, gray.mean(dim=(-3, -2, -1), keepdim=True), factor)
    # Sharpness: blend the interior with a 3x3 smoothing (centre 5/13, the rest 1/13); the border stays.
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    out = images.float()
    blurred = F.conv2d(out, kernel.expand(channels, 1, 3, 3), groups=channels).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((blurred - inner).mul_((1.0 - factor).to(torch.float32).view(-1, 1, 1, 1)))
    return out.clamp_(0, 255).to(torch.uint8)


def apply_trivial_augment(images: Tensor, draw: TrivialAugmentDraw) -> Tensor:
    """Apply the drawn operations, one group of images per operation. ``(N, C, H, W) uint8 -> same``."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"TrivialAugment works on uint8 batches (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(draw) != images.shape[0]:
        raise ValueError(f"{len(draw)} draws for {images.shape[0]} images")
    height, width = images.shape[-2:]
    out = images.clone()
    names = [OPERATIONS[i] for i in draw.operation.tolist()]
    magnitudes = draw.magnitude.tolist()
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        turn = magnitudes[index] % 360
        if name == "Rotate" and (turn in (0.0, 180.0) or (height == width and turn in (90.0, 270.0))):
            name = f"rot90:{int(turn) // 90}"  # torchvision turns these exactly (rot90), as here
        elif name in _AFFINE:
            name = "affine"
        groups.setdefault(name, []).append(index)

    def put(indices: list[int], transform) -> None:  # noqa: ANN001 - a Tensor -> Tensor function
        where = torch.tensor(indices).to(images.device, non_blocking=True)
        out[where] = transform(images[where], where)

    for name, indices in groups.items():
        if name == "Identity" or name == "rot90:0":
            continue
        if name.startswith("rot90:"):
            put(indices, lambda x, _w, k=int(name[-1]): torch.rot90(x, k=k, dims=(-2, -1)))
        elif name == "affine":
            matrices = [_inverse_affine(names[i], magnitudes[i], height, width) for i in indices]
            put(indices, lambda x, _w, m=matrices: _affine(x, m))
        elif name in _BLEND:
            factor = (1.0 + draw.magnitude[indices]).to(images.device, non_blocking=True)
            put(indices, lambda x, _w, n=name, f=factor: _color_operation(n, x, f))
        elif name == "Posterize":
            bits = torch.tensor([int(magnitudes[i]) for i in indices])
            mask = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8).to(images.device, non_blocking=True)
            put(indices, lambda x, _w, m=mask: x & m.view(-1, 1, 1, 1))
        elif name == "Solarize":
            threshold = torch.tensor([255.0 * magnitudes[i] for i in indices], dtype=torch.float64)
            threshold = threshold.to(torch.float32).to(images.device, non_blocking=True)
            put(indices, lambda x, _w, t=threshold: torch.where(x.float() >= t.view(-1, 1, 1, 1), 255 - x, x))
        elif name == "AutoContrast":
            put(indices, lambda x, _w: TF.autocontrast(x))   # per image and channel already
        elif name == "Equalize":
            put(indices, lambda x, _w: TF.equalize(x))       # torchvision's batched histogram kernel
    return out


def batched_trivial_augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """TrivialAugmentWide on a whole uint8 batch, on the batch's device. ``(N, C, H, W) -> (N, C, H, W)``."""
    return apply_trivial_augment(images, draw_trivial_augment(images.shape[0], generator))
