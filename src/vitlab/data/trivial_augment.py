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
operations build the same inverse-affine matrices in double precision and so give the same pixels (tested on
the CPU); the colour operations blend with a per-image factor where torchvision uses a Python float, which can
round a handful of pixels the other way (by one grey level). ``tests/test_augment.py`` checks both, and that
the draws follow TrivialAugment's distribution.

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


#: The strengths that are ``linspace(start, end, 31)`` in torchvision's table (Posterize's are bit counts).
_LINEAR_RANGES: dict[str, tuple[float, float]] = {
    "ShearX": (0.0, 0.99), "ShearY": (0.0, 0.99), "TranslateX": (0.0, 32.0), "TranslateY": (0.0, 32.0),
    "Rotate": (0.0, 135.0), "Brightness": (0.0, 0.99), "Color": (0.0, 0.99), "Contrast": (0.0, 0.99),
    "Sharpness": (0.0, 0.99), "Solarize": (1.0, 0.0)}


def _magnitudes(operation: str, bins: int = NUM_MAGNITUDE_BINS) -> Tensor | None:
    """The ``(bins,)`` strengths of one operation, exactly as torchvision tabulates them (float32; int32 bits
    for Posterize), or ``None`` for the operations without a strength."""
    if operation == "Posterize":
        return (8 - (torch.arange(bins) / ((bins - 1) / 6))).round().int()
    if operation in _LINEAR_RANGES:
        return torch.linspace(*_LINEAR_RANGES[operation], bins)
    return None


#: ``(14, 31)`` float64: every operation's strengths by level (zeros where it has none), built once.
_STRENGTHS = torch.stack([torch.zeros(NUM_MAGNITUDE_BINS, dtype=torch.float64) if (table := _magnitudes(name)) is None
                          else table.double() for name in OPERATIONS])
#: ``(14,)`` bool: which operations draw a sign.
_SIGNED_MASK = torch.tensor([name in _SIGNED for name in OPERATIONS])


class TrivialAugmentDraw:
    """One batch's random choices: ``operation`` (N,) indices into :data:`OPERATIONS` and ``magnitude`` (N,)
    float64 signed strengths (0 for the operations without one), both on the CPU."""

    def __init__(self, operation: Tensor, magnitude: Tensor) -> None:
        if operation.shape != magnitude.shape or operation.ndim != 1:
            raise ValueError(f"operation and magnitude must be two (N,) tensors, got {tuple(operation.shape)} "
                             f"and {tuple(magnitude.shape)}")
        self.operation = operation.long().cpu()
        self.magnitude = magnitude.double().cpu()
        if len(self.operation) and not (0 <= int(self.operation.min()) and int(self.operation.max()) < len(OPERATIONS)):
            raise ValueError(f"operation indices must lie in [0, {len(OPERATIONS)}), got "
                             f"{int(self.operation.min())}..{int(self.operation.max())}")

    def __len__(self) -> int:
        return len(self.operation)


def draw_trivial_augment(n: int, generator: torch.Generator | None = None) -> TrivialAugmentDraw:
    """Draw TrivialAugmentWide's choices for ``n`` images: an operation uniformly from the 14, a strength
    uniformly from its 31 levels, a sign with probability 1/2 each (torchvision's ``rand() <= 0.5``).
    Drawn on the CPU from ``generator`` (default: PyTorch's global one, so ``seed`` fixes them)."""
    operation = torch.randint(len(OPERATIONS), (n,), generator=generator)
    level = torch.randint(NUM_MAGNITUDE_BINS, (n,), generator=generator)
    negative = torch.rand(n, generator=generator, dtype=torch.float64) <= 0.5
    magnitude = _STRENGTHS[operation, level]
    magnitude = torch.where(negative & _SIGNED_MASK[operation], -magnitude, magnitude)
    return TrivialAugmentDraw(operation, magnitude)


def _inverse_affine(operation: str, magnitude: float, height: int, width: int) -> list[float]:
    """The inverse affine matrix torchvision's ``affine``/``rotate`` build for one image, as 6 floats (a 2x3
    matrix, row-major), by the same double-precision formulas, so the same pixels come out. Shears are centred
    on the top-left corner, as in AutoAugment."""
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


def _blend(images: Tensor, other: Tensor, weight: Tensor) -> Tensor:
    """``weight * images + (1 - weight) * other`` per image, clamped to 0-255.
    ``(N, C, H, W) uint8, (N, 1 or C, H or 1, W or 1) float32, (N, 2) float32 -> (N, C, H, W) uint8``;
    ``weight[:, 0]`` is the factor and ``weight[:, 1]`` its complement (both rounded from float64 on the CPU,
    as torchvision rounds its Python float)."""
    factor, rest = weight[:, 0].view(-1, 1, 1, 1), weight[:, 1].view(-1, 1, 1, 1)
    return images.float().mul_(factor).add_(other * rest).clamp_(0, 255).to(torch.uint8)


def _color_operation(name: str, images: Tensor, weight: Tensor) -> Tensor:
    """Brightness, Color (saturation), Contrast or Sharpness with a per-image factor: ``weight`` (N, 2) float32 on
    the images' device holds the factor and one minus it. ``(N, C, H, W) uint8 -> (N, C, H, W) uint8``."""
    channels = images.shape[-3]
    if name == "Brightness":
        return images.float().mul_(weight[:, 0].view(-1, 1, 1, 1)).clamp_(0, 255).to(torch.uint8)
    if name == "Color":
        return images if channels == 1 else _blend(images, _grayscale(images), weight)
    if name == "Contrast":
        gray = _grayscale(images) if channels == 3 else images.float()
        return _blend(images, gray.mean(dim=(-3, -2, -1), keepdim=True), weight)
    # Sharpness: blend the interior with a 3x3 smoothing (centre 5/13, the rest 1/13); the border stays.
    if images.shape[-1] <= 2 or images.shape[-2] <= 2:
        return images
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    out = images.float()
    blurred = F.conv2d(out, kernel.expand(channels, 1, 3, 3), groups=channels).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.add_((blurred - inner).mul_(weight[:, 1].view(-1, 1, 1, 1)))
    return out.clamp_(0, 255).to(torch.uint8)


def _group(names: list[str], magnitudes: list[float], height: int, width: int) -> dict[str, list[int]]:
    """The batch's images by what is done to them: ``affine`` for the shears, translations and rotations that
    resample, ``rot90:k`` for the turns torchvision makes exactly with ``rot90``, else the operation's name."""
    groups: dict[str, list[int]] = {}
    for index, (name, magnitude) in enumerate(zip(names, magnitudes)):
        turn = magnitude % 360
        if name == "Rotate" and (turn in (0.0, 180.0) or (height == width and turn in (90.0, 270.0))):
            name = f"rot90:{int(turn) // 90}"
        elif name in _AFFINE:
            name = "affine"
        groups.setdefault(name, []).append(index)
    return groups


def apply_trivial_augment(images: Tensor, draw: TrivialAugmentDraw) -> Tensor:
    """Apply the drawn operations, one call per group of images. ``(N, C, H, W) uint8 -> (N, C, H, W) uint8``
    with C = 1 or 3, on the images' device; ``draw`` (N draws) stays on the CPU, so that grouping the images
    never waits for the device."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"TrivialAugment works on uint8 batches (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if len(draw) != images.shape[0]:
        raise ValueError(f"{len(draw)} draws for {images.shape[0]} images")
    height, width = images.shape[-2:]
    device = images.device
    names = [OPERATIONS[i] for i in draw.operation.tolist()]
    magnitudes = draw.magnitude.tolist()
    out = images.clone()
    for name, indices in _group(names, magnitudes, height, width).items():
        if name in ("Identity", "rot90:0"):
            continue
        where = torch.tensor(indices).to(device, non_blocking=True)
        group = images[where]
        if name.startswith("rot90:"):
            group = torch.rot90(group, k=int(name[-1]), dims=(-2, -1))
        elif name == "affine":
            group = _affine(group, [_inverse_affine(names[i], magnitudes[i], height, width) for i in indices])
        elif name in _BLEND:
            factor = 1.0 + draw.magnitude[indices]                  # float64 on the CPU, as torchvision's float
            weight = torch.stack([factor, 1.0 - factor], 1).to(torch.float32)   # no float64 on the device (MPS)
            group = _color_operation(name, group, weight.to(device, non_blocking=True))
        elif name == "Posterize":
            bits = torch.tensor([int(magnitudes[i]) for i in indices])
            mask = (((1 << bits) - 1) << (8 - bits)).to(torch.uint8).to(device, non_blocking=True)
            group = group & mask.view(-1, 1, 1, 1)
        elif name == "Solarize":
            threshold = torch.tensor([255.0 * magnitudes[i] for i in indices], dtype=torch.float64)
            threshold = threshold.to(torch.float32).to(device, non_blocking=True).view(-1, 1, 1, 1)
            group = torch.where(group.float() >= threshold, 255 - group, group)
        elif name == "AutoContrast":
            group = TF.autocontrast(group)    # per image and channel already
        elif name == "Equalize":
            group = TF.equalize(group)        # torchvision's batched histogram kernel
        out[where] = group
    return out


def batched_trivial_augment(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """TrivialAugmentWide on a whole uint8 batch, on the batch's device: draws from ``generator`` (default: the
    global CPU generator) then :func:`apply_trivial_augment`. ``(N, C, H, W) -> (N, C, H, W)``, C = 1 or 3."""
    return apply_trivial_augment(images, draw_trivial_augment(images.shape[0], generator))
