"""Where a ViT is robust and where it is not, measured: occlusion, patch shuffling, common corruptions,
adversarial perturbations and translation, each as a curve of accuracy against the strength of the damage.

Every transform takes and returns images on the **pixel scale**, floats in [0, 1], shaped ``(N, C, H, W)``
(``C`` = 1 or 3): the evaluation un-normalizes the dataset's images, damages them, and normalizes them again
for the model (:class:`PixelModel`), so an ε of 8/255 means 8 grey levels whatever the dataset's mean and std.
Every random transform draws from a ``torch.Generator`` it is given (on the CPU, so the same seed gives the same
damage on any device): the same seed damages the same images the same way for every model, and a ViT and a CNN
are compared on identical inputs.

The five tests (:data:`TESTS`), after the papers whose claims lesson 17 checks:

* **occlusion** (Naseer et al. 2021, "Intriguing Properties of Vision Transformers"): a fraction (0-90 %) of
  the patches of a ``g x g`` grid is removed, in a random order or most salient first (attention rollout for a
  ViT, Grad-CAM for the others: :mod:`vitlab.analysis.explain`). Every model sees the same patches painted with
  the dataset's mean (:func:`mask_patches`, variants ``*-pixels``); a ViT is also run on the kept patch *tokens*
  alone (:meth:`vitlab.models.vit.ViT.keep_patch_tokens`, variants ``*-tokens``), the paper's own protocol.
* **shuffle** (Naseer et al. 2021): the image cut into a ``g x g`` grid of blocks, randomly permuted
  (:func:`shuffle_patches`; g = 1, 2, 4, 7 on 28x28 images, 1, 2, 4, 8 on 32x32).
* **corruptions** (Hendrycks & Dietterich 2019, CIFAR-10-C): :data:`CORRUPTIONS` at severities 1-5 with
  CIFAR-10-C's own parameters (Hendrycks' ``make_cifar_c.py``); see :func:`corrupt` for the ops.
* **adversarial** (Goodfellow et al. 2015; Madry et al. 2018): FGSM (:func:`fgsm`, written out for the
  lesson) and L∞ PGD (:func:`pgd`) at several ε in pixel units; both equal ``torchattacks``' to 1e-6 (a test).
* **translation** (Azulay & Weiss 2019; Zhang 2019): every image shifted by 1..k pixels (:func:`translate`, with
  wrap-around and with zero padding); besides accuracy, *consistency*: the share of images whose prediction
  does not change, the measure of a patch grid's weak equivariance.

:func:`evaluate_robustness` runs them in one pass over a dataset (its own small batched loop: this floor sits
below :mod:`vitlab.engine`) and returns the ``robustness.json`` record ``vitlab robustness RUN`` writes; the
metric helpers (:func:`accuracy_per_level`, :func:`area_under_curve`, :func:`corruption_error`,
:func:`mean_corruption_error`) turn records into the numbers the report and lesson 17 compare.
"""

from __future__ import annotations

import io
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.io import unwrap
from ..core.precision import autocast_context, resolve_precision
from ..data.datasets import ImageTensorDataset
from ..models.vit import ViT
from .explain import attention_maps, attention_rollout, grad_cam

__all__ = [
    "TESTS", "SEVERITIES", "CORRUPTIONS", "CORRUPTION_PARAMETERS", "RobustnessSettings", "PixelModel",
    "patch_grid_size", "random_patch_order", "salient_patch_order", "occlusion_sets", "mask_patches",
    "drop_tokens_logits", "shuffle_patches", "corrupt", "gaussian_noise", "shot_noise", "impulse_noise",
    "speckle_noise", "gaussian_blur", "contrast", "brightness", "jpeg", "pixelate", "elastic", "box_resize",
    "fgsm", "pgd", "translate", "seeded_subset", "evaluate_robustness", "check_tests", "check_severities",
    "accuracy_per_level", "area_under_curve", "corruption_error", "relative_corruption_error",
    "mean_corruption_error", "format_table",
]

#: The tests :func:`evaluate_robustness` knows, in the order it runs and reports them.
TESTS: tuple[str, ...] = ("occlusion", "shuffle", "corruptions", "adversarial", "translation")
#: The severities of Hendrycks & Dietterich's corruptions.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
TranslationMode = Literal["wrap", "pad"]


# --------------------------------------------------------------------------- checks


def _check_pixels(images: Tensor) -> None:
    """A transform's input: a float ``(N, C, H, W)`` batch on the [0, 1] pixel scale."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float pixel images (N, C, H, W) in [0, 1], got {images.dtype} "
                         f"{tuple(images.shape)}")


def check_tests(tests: Sequence[str]) -> tuple[str, ...]:
    """The tests named, in :data:`TESTS`' order, each once; an unknown name is a ``ValueError`` listing them."""
    names = [t.strip() for t in tests if t.strip()]
    unknown = [t for t in names if t not in TESTS]
    if unknown or not names:
        raise ValueError(f"unknown robustness test {', '.join(unknown) or '(none given)'}: choose from "
                         f"{', '.join(TESTS)}")
    return tuple(t for t in TESTS if t in names)


def check_severities(severities: Sequence[int]) -> tuple[int, ...]:
    """Sorted, distinct severities, each in 1-5 (Hendrycks & Dietterich's scale); else a ``ValueError``."""
    bad = [s for s in severities if isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITIES]
    if bad or not severities:
        raise ValueError(f"corruption severities are integers from 1 to 5, got {list(severities)}")
    return tuple(sorted(set(severities)))


# --------------------------------------------------------------------------- occlusion


def patch_grid_size(images: Tensor, patch_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the grid of ``patch_size`` patches over ``(N, C, H, W)`` images (an error if
    the patch does not divide the image)."""
    _check_pixels(images)
    height, width = images.shape[-2:]
    if patch_size <= 0 or height % patch_size or width % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide {height}x{width} images")
    return height // patch_size, width // patch_size


def random_patch_order(n: int, num_patches: int, generator: torch.Generator) -> Tensor:
    """A random order of the patches per image, the first to be removed first: ``-> (n, P)`` int64, each row a
    permutation of ``range(P)`` (patches row-major, as :func:`vitlab.layers.patches.patchify` orders them)."""
    return torch.rand(n, num_patches, generator=generator).argsort(dim=1)


def salient_patch_order(model: nn.Module, images: Tensor, patch_size: int) -> Tensor:
    """The patches per image, most salient first, by the model's own map: attention rollout (Abnar & Zuidema
    2020) for a model with attention maps (ViT, DeiT), Grad-CAM (of the predicted class) for the others.

    ``images``: normalized ``(N, C, H, W)``, as the model takes them ``-> (N, P)`` int64, P the patches of a
    ``patch_size`` grid. A map of another resolution (a CNN's last feature map) is brought to the grid by
    nearest upsampling to the image and averaging over each patch; ties keep row-major order (stable sort).
    """
    rows, cols = patch_grid_size(images, patch_size)
    inner = unwrap(model)
    if getattr(type(inner), "has_attention_maps", False):
        prefix = getattr(inner, "num_prefix_tokens", 1)
        maps = attention_rollout(attention_maps(model, images), num_prefix_tokens=prefix)
    elif hasattr(inner, "gradcam_layer"):
        maps = grad_cam(model, images)
    else:
        raise ValueError(f"salient occlusion needs attention maps or a Grad-CAM layer; {type(inner).__name__} has "
                         "neither")
    maps = F.interpolate(maps.unsqueeze(1).float(), size=tuple(images.shape[-2:]), mode="nearest")
    scores = F.adaptive_avg_pool2d(maps, (rows, cols)).flatten(1)                  # (N, P)
    return scores.argsort(dim=1, descending=True, stable=True)


def occlusion_sets(order: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """The patches removed and kept when ``fraction`` of them go, first in ``order``.

    ``order (N, P)`` (:func:`random_patch_order`, :func:`salient_patch_order`) ``-> (dropped (N, P) bool,
    keep (N, K) int64)``: ``round(fraction * P)`` patches dropped, ``K`` = the rest, in row-major order. The sets
    are nested: a larger fraction drops a superset. ``fraction`` in [0, 1); at least one patch is kept.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"occlusion fraction must be in [0, 1), got {fraction}")
    n, patches = order.shape
    dropped_count = min(int(round(fraction * patches)), patches - 1)
    dropped = torch.zeros(n, patches, dtype=torch.bool, device=order.device)
    dropped.scatter_(1, order[:, :dropped_count], True)
    keep = order[:, dropped_count:].sort(dim=1).values
    return dropped, keep


def mask_patches(images: Tensor, dropped: Tensor, patch_size: int, fill: Sequence[float] | Tensor) -> Tensor:
    """Paint the dropped patches with ``fill`` (one value per channel, pixel scale: the dataset's mean).

    ``images (N, C, H, W)``, ``dropped (N, P)`` bool over the ``patch_size`` grid (row-major) ``-> (N, C, H, W)``.
    """
    rows, cols = patch_grid_size(images, patch_size)
    if dropped.shape != (images.shape[0], rows * cols):
        raise ValueError(f"dropped must be (N, P) = ({images.shape[0]}, {rows * cols}), got {tuple(dropped.shape)}")
    mask = dropped.view(-1, 1, rows, cols).repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    value = torch.as_tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return torch.where(mask.to(images.device), value, images)


def drop_tokens_logits(model: nn.Module, images: Tensor, keep: Tensor) -> Tensor:
    """A ViT (or DeiT, early-exit ViT) run on the kept patch tokens only (Naseer et al. 2021's occlusion).

    ``images``: normalized ``(N, C, H, W)``; ``keep (N, K)`` patch indices (:func:`occlusion_sets`) ``->
    (N, classes)`` logits: embed all patches with their positions, keep the prefix tokens and ``keep``'s
    patches, run the encoder and head (:meth:`ViT.forward_tokens`).
    """
    vit = unwrap(model)
    if not isinstance(vit, ViT):
        raise ValueError(f"token dropping needs a ViT (its tokens are patches); {type(vit).__name__} is not one: "
                         "mask the pixels instead (mask_patches)")
    return vit.forward_tokens(vit.keep_patch_tokens(vit.tokens(images), keep))


# --------------------------------------------------------------------------- shuffling


def shuffle_patches(images: Tensor, grid: int, generator: torch.Generator) -> Tensor:
    """Cut each image into a ``grid x grid`` array of blocks and put them back in a random order (one
    permutation per image). ``(N, C, H, W) -> (N, C, H, W)``; ``grid`` must divide H and W; ``grid=1`` is the
    identity. The pixels are only moved: every image keeps its histogram."""
    _check_pixels(images)
    n, c, height, width = images.shape
    if grid <= 0 or height % grid or width % grid:
        raise ValueError(f"a {grid}x{grid} grid does not divide {height}x{width} images")
    h, w = height // grid, width // grid
    blocks = images.reshape(n, c, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, h, w)
    order = torch.rand(n, grid * grid, generator=generator).argsort(dim=1).to(images.device)
    shuffled = blocks[torch.arange(n, device=images.device).unsqueeze(1), order]
    return shuffled.reshape(n, grid, grid, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)


# --------------------------------------------------------------------------- corruptions
#
# Parameters: CIFAR-10-C's, from Hendrycks' make_cifar_c.py (github.com/hendrycks/robustness,
# ImageNet-C/create_c/make_cifar_c.py), one value (or tuple) per severity 1-5. The ImageNet-C parameters of the
# `imagecorruptions` package are for 224-pixel images and would wipe out a 32x32 one, hence these.


def _noise_like(images: Tensor, generator: torch.Generator, kind: str = "normal") -> Tensor:
    """Random numbers of the images' shape, drawn on the CPU from ``generator`` (the same on any device)."""
    shape = tuple(images.shape)
    noise = torch.randn(shape, generator=generator) if kind == "normal" else torch.rand(shape, generator=generator)
    return noise.to(images.device, images.dtype)


def gaussian_noise(images: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """Additive Gaussian noise of standard deviation ``scale``, clipped to [0, 1]. ``(N, C, H, W) -> same``."""
    return (images + scale * _noise_like(images, generator)).clamp(0, 1)


def shot_noise(images: Tensor, photons: float, generator: torch.Generator) -> Tensor:
    """Poisson (shot) noise: each value becomes ``Poisson(photons * x) / photons``; fewer photons, more noise.
    ``(N, C, H, W) -> same``; ``photons=inf`` is the identity."""
    if math.isinf(photons):
        return images.clone()
    counts = torch.poisson(images.detach().float().cpu() * photons, generator=generator)
    return (counts / photons).to(images.device, images.dtype).clamp(0, 1)


def impulse_noise(images: Tensor, amount: float, generator: torch.Generator) -> Tensor:
    """Salt-and-pepper noise (scikit-image's ``random_noise(mode="s&p")``): a share ``amount`` of the values,
    each channel separately, set to 0 or 1 with equal odds. ``(N, C, H, W) -> same``."""
    flipped = _noise_like(images, generator, "uniform") < amount
    salt = (_noise_like(images, generator, "uniform") < 0.5).to(images.dtype)
    return torch.where(flipped, salt, images)


def speckle_noise(images: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """Multiplicative Gaussian noise ``x + x * N(0, scale)``, clipped. ``(N, C, H, W) -> same``."""
    return (images + images * scale * _noise_like(images, generator)).clamp(0, 1)


def _gaussian_filter(images: Tensor, sigma: float, radius: int, padding: str) -> Tensor:
    """Separable Gaussian filter (SciPy's ``gaussian_filter``: weights ``exp(-x^2 / 2 sigma^2)`` on ``[-radius,
    radius]``, normalized), two 1-D convolutions with ``torch.nn.functional.conv2d``, the border ``padding``
    (``"replicate"``: SciPy's ``nearest``; ``"reflect"``: SciPy's ``mirror``). ``(N, C, H, W) -> same``."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.device, images.dtype)
    n, c, height, width = images.shape
    flat = F.pad(images.reshape(n * c, 1, height, width), (radius,) * 4, mode=padding)
    flat = F.conv2d(F.conv2d(flat, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, height, width)


def gaussian_blur(images: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur of standard deviation ``sigma`` pixels, as scikit-image's ``filters.gaussian`` (which
    CIFAR-10-C used): a kernel truncated at 4 sigma, the border extended by its edge pixels (``nearest``), two
    1-D convolutions (``conv2d``); a test checks it equals scikit-image's. ``(N, C, H, W) -> same``; ``sigma=0``
    is the identity."""
    _check_pixels(images)
    radius = int(4.0 * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return images.clone()
    return _gaussian_filter(images, sigma, radius, "replicate").clamp(0, 1)


def contrast(images: Tensor, factor: float, generator: torch.Generator | None = None) -> Tensor:
    """Contrast reduced to ``factor`` around each image's per-channel mean (CIFAR-10-C's formula; torchvision's
    ``adjust_contrast`` blends towards the grey mean instead). ``(N, C, H, W) -> same``; ``factor=1``: identity."""
    _check_pixels(images)
    means = images.mean(dim=(2, 3), keepdim=True)
    return ((images - means) * factor + means).clamp(0, 1)


def brightness(images: Tensor, shift: float, generator: torch.Generator | None = None) -> Tensor:
    """Brightness: ``shift`` added to the HSV value channel, clipped at 1, hue and saturation kept (CIFAR-10-C:
    scikit-image's rgb2hsv and back). For fixed hue and saturation RGB is proportional to the value
    ``V = max(r, g, b)``, so the round trip is the closed form ``x * V' / V`` (``V' = min(V + shift, 1)``;
    a black pixel, of saturation 0, becomes the grey ``V'``), vectorized and exact; a 1-channel image is its own
    value channel. ``(N, C, H, W) -> same``; ``shift=0`` is the identity."""
    _check_pixels(images)
    value = images.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(0, 1)
    scaled = images * (new_value / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(images)).clamp(0, 1)


def _to_uint8(images: Tensor) -> Tensor:
    """Pixel floats in [0, 1] to uint8 (rounded), on the CPU."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def jpeg(images: Tensor, quality: int, generator: torch.Generator | None = None) -> Tensor:
    """JPEG compression at ``quality`` (1-100): each image encoded and decoded by PIL (libjpeg, its default 4:2:0
    chroma subsampling), exactly as CIFAR-10-C made it. torchvision's ``encode_jpeg`` gives the same bytes but is
    deprecated since torchvision 0.29. ``(N, C, H, W)`` (C = 1 or 3) ``-> same``, on the 8-bit grid."""
    _check_pixels(images)
    if not 1 <= quality <= 100 or images.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs a quality in 1-100 and 1- or 3-channel images, got {quality} and "
                         f"{images.shape[1]} channels")
    decoded = []
    for image in _to_uint8(images).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=int(quality))
        decoded.append(np.asarray(Image.open(buffer)).reshape(image.shape))
    out = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
    return out.to(images.device, images.dtype) / 255.0


def _box_weights(size_in: int, size_out: int) -> Tensor:
    """PIL's BOX resampling as a ``(size_out, size_in)`` matrix (Pillow's ``precompute_coeffs`` with its box
    filter: output pixel ``i`` averages the input pixels whose centres lie within half an output pixel of its
    centre; upsampling is nearest-neighbour)."""
    scale = size_in / size_out
    filter_scale = max(scale, 1.0)
    support = 0.5 * filter_scale
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        center = (i + 0.5) * scale
        low, high = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), size_in)
        for j in range(low, high):
            x = (j - center + 0.5) / filter_scale
            weights[i, j] = 1.0 if -0.5 < x <= 0.5 else 0.0
    return weights / weights.sum(dim=1, keepdim=True)


def box_resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize with PIL's BOX filter, vectorized as two matrix products (CIFAR-10-C's pixelate resizes with PIL's
    BOX, which torchvision's tensor resize does not offer). ``(N, C, H, W) -> (N, C, h, w)``; a test checks it
    against PIL."""
    _check_pixels(images)
    rows = _box_weights(images.shape[-2], size[0]).to(images.device, images.dtype)
    cols = _box_weights(images.shape[-1], size[1]).to(images.device, images.dtype)
    return rows @ images @ cols.T


def pixelate(images: Tensor, factor: float, generator: torch.Generator | None = None) -> Tensor:
    """Pixelation: shrink to ``int(side * factor)`` with a box filter and blow back up (CIFAR-10-C's, with PIL's
    BOX: :func:`box_resize`). ``(N, C, H, W) -> same``; ``factor=1`` is the identity."""
    _check_pixels(images)
    height, width = images.shape[-2:]
    small = (max(int(height * factor), 1), max(int(width * factor), 1))
    return box_resize(box_resize(images, small), (height, width)).clamp(0, 1)


def elastic(images: Tensor, parameters: tuple[float, float, float], generator: torch.Generator) -> Tensor:
    """Elastic transform as CIFAR-10-C's (after Simard et al. 2003): a random affine map, three points of a
    square around the centre each moved by up to ``affine`` pixels, then a smooth random displacement, uniform
    noise in [-1, 1] blurred by a Gaussian of ``sigma`` pixels (truncated at 3 sigma) and scaled by ``alpha``
    pixels. ``parameters = (alpha, sigma, affine)`` in pixels.

    Ops: the affine map solved with ``torch.linalg.solve`` (OpenCV's ``getAffineTransform``), the displacement
    blurred by a separable Gaussian (``conv2d``, mirrored border), and both warps composed into one sampling grid for
    ``torch.nn.functional.grid_sample`` (bilinear, reflected at the border), one per image, batched: the
    reference samples twice (OpenCV's ``warpAffine``, then SciPy's ``map_coordinates``), which blurs a little
    more. ``(N, C, H, W) -> same``; ``(0, 0, 0)`` is the identity.
    """
    _check_pixels(images)
    alpha, sigma, affine = parameters
    n, _, height, width = images.shape
    # The affine part: three points of a square around the centre (x, y), each moved at random.
    center, half = float(min(height, width) // 2), float(min(height, width) // 3)
    source = torch.tensor([[center + half, center + half], [center + half, center - half],
                           [center - half, center - half]], dtype=torch.float64)
    moved = source + (torch.rand(n, 3, 2, generator=generator, dtype=torch.float64) * 2 - 1) * affine
    ones = torch.ones(3, 1, dtype=torch.float64)
    matrix = torch.linalg.solve(torch.cat([source, ones], 1), moved).transpose(1, 2)     # (N, 2, 3): p -> M p
    # The displacement field (dx, dy) in pixels, smoothed.
    noise = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    radius = min(int(3.0 * sigma + 0.5), min(height, width) - 1)  # reflection padding needs radius < side
    if sigma > 0 and radius > 0:
        noise = _gaussian_filter(noise, sigma, radius, "reflect")
    displacement = noise.double() * alpha
    # Output pixel p samples the source at M^-1 (p + d(p)) (OpenCV's warpAffine inverts M).
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    target = torch.stack([xs + displacement[:, 0], ys + displacement[:, 1]], dim=-1)      # (N, H, W, 2) as (x, y)
    inverse, shift = torch.linalg.inv(matrix[:, :, :2]), matrix[:, :, 2]
    sample = torch.einsum("nij,nhwj->nhwi", inverse, target - shift.view(n, 1, 1, 2))     # (N, H, W, 2)
    grid = torch.stack([(2 * sample[..., 0] + 1) / width - 1, (2 * sample[..., 1] + 1) / height - 1], dim=-1)
    warped = F.grid_sample(images, grid.to(images.device, images.dtype), mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    return warped.clamp(0, 1)


#: Each corruption's function ``(images, parameter, generator) -> images``.
CORRUPTIONS: dict[str, Callable[[Tensor, Any, torch.Generator], Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "contrast": contrast, "brightness": brightness,
    "jpeg": jpeg, "pixelate": pixelate, "elastic": elastic,
}

#: CIFAR-10-C's parameter per severity 1-5 (make_cifar_c.py). Elastic's are fractions of the image side
#: (CIFAR-10-C writes them as ``IMSIZE * f`` with ``IMSIZE = 32``), so they scale to 28x28 images.
CORRUPTION_PARAMETERS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "elastic": ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
}


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator, quantize: bool = True) -> Tensor:
    """One of :data:`CORRUPTIONS` at ``severity`` 1-5 with CIFAR-10-C's parameters. ``(N, C, H, W) -> same``.

    The ops, and why: the noises are a line of tensor arithmetic each (``torch.randn``/``rand``/``poisson`` from
    the seeded ``generator``: torchvision's ``GaussianNoise`` draws from the global RNG, and the formulas are
    CIFAR-10-C's own); Gaussian blur, elastic's smoothing and sampling are torchvision's ``gaussian_blur`` and
    PyTorch's ``grid_sample``; JPEG is PIL's codec, CIFAR-10-C's own; pixelate is PIL's BOX resampling written as
    two matrix products; contrast and brightness are CIFAR-10-C's formulas, vectorized (torchvision's
    ``adjust_contrast`` and ``adjust_brightness`` compute other things). kornia is not needed for any of them, and
    the ``imagecorruptions`` package carries ImageNet-C's parameters, far too strong for 32x32 images.

    ``quantize``: round down to the 8-bit grid, as CIFAR-10-C stores its images (``np.uint8``).
    """
    _check_pixels(images)
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    check_severities([severity])
    parameter = CORRUPTION_PARAMETERS[name][severity - 1]
    if name == "elastic":
        parameter = tuple(f * min(images.shape[-2:]) for f in parameter)
    out = CORRUPTIONS[name](images, parameter, generator)
    return torch.floor(out * 255 + 1e-3).clamp(0, 255) / 255 if quantize else out


# --------------------------------------------------------------------------- adversarial


class PixelModel(nn.Module):
    """A classifier that takes pixel images: ``(N, C, H, W)`` in [0, 1] ``-> normalize -> model -> (N, classes)``.

    The attacks' ε are in pixel units, so they work on pixel images; this puts the dataset's normalization in
    front of the model (the model is held, not copied). ``torchattacks`` gets the same module in the tests."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` pixels -> normalized, as the dataset normalizes."""
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.normalize(images))


def _input_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Gradient of the mean cross-entropy with respect to the pixel images. ``(N, C, H, W) -> same``."""
    with torch.enable_grad():
        images = images.clone().detach().requires_grad_(True)
        loss = F.cross_entropy(model(images).float(), labels)
        return torch.autograd.grad(loss, images)[0]


def fgsm(model: nn.Module, images: Tensor, labels: Tensor, eps: float) -> Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015): one step of size ``eps`` along the sign of the loss
    gradient, ``x + eps * sign(grad_x CE(f(x), y))``, clipped to [0, 1].

    ``model`` takes pixel images (:class:`PixelModel`); ``images (N, C, H, W)`` in [0, 1], ``labels (N,)``
    ``-> (N, C, H, W)`` adversarial images, at most ``eps`` from ``images`` in every pixel (L∞).
    """
    _check_pixels(images)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    gradient = _input_gradient(model, images, labels)
    return (images + eps * gradient.sign()).clamp(0, 1).detach()


def pgd(model: nn.Module, images: Tensor, labels: Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, random_start: bool = False,
        generator: torch.Generator | None = None) -> Tensor:
    """Projected gradient descent in the L∞ ball (Madry et al. 2018): ``steps`` FGSM steps of ``step_size``
    (default ``2.5 * eps / steps``, Madry's), each followed by a projection back into the ``eps``-ball around
    ``images`` and into [0, 1]. ``random_start``: begin at a uniform point of the ball, drawn from ``generator``
    (on the CPU) as ``torchattacks`` draws it; else at the image itself.

    ``model`` takes pixel images (:class:`PixelModel`); ``(N, C, H, W)``, ``labels (N,)`` ``-> (N, C, H, W)``.
    """
    _check_pixels(images)
    if eps < 0 or steps < 1:
        raise ValueError(f"pgd needs eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    alpha = 2.5 * eps / steps if step_size is None else step_size
    images = images.detach()
    adversarial = images.clone()
    if random_start:
        start = torch.empty(tuple(images.shape)).uniform_(-eps, eps, generator=generator)
        adversarial = (adversarial + start.to(images.device, images.dtype)).clamp(0, 1)
    for _ in range(steps):
        adversarial = adversarial.detach() + alpha * _input_gradient(model, adversarial, labels).sign()
        delta = (adversarial - images).clamp(-eps, eps)
        adversarial = (images + delta).clamp(0, 1).detach()
    return adversarial


# --------------------------------------------------------------------------- translation


def translate(images: Tensor, shifts: Tensor | tuple[int, int], mode: TranslationMode = "wrap",
              fill: float = 0.0) -> Tensor:
    """Shift images by whole pixels: ``shifts`` ``(dy, dx)`` for all, or ``(N, 2)`` one per image (down and right
    positive). ``mode="wrap"``: what leaves one side comes back on the other (``torch.roll``); ``"pad"``: the
    uncovered strip is ``fill`` (pixel scale; 0 is black, as the CIFAR crop augmentation pads).
    ``(N, C, H, W) -> (N, C, H, W)``, vectorized over per-image shifts."""
    _check_pixels(images)
    if mode not in ("wrap", "pad"):
        raise ValueError(f"translation mode must be 'wrap' or 'pad', got {mode!r}")
    n, _, height, width = images.shape
    shifts = torch.as_tensor(shifts, dtype=torch.long, device=images.device)
    shifts = shifts.expand(n, 2) if shifts.dim() == 1 else shifts
    if shifts.shape != (n, 2):
        raise ValueError(f"shifts must be (dy, dx) or (N, 2), got {tuple(shifts.shape)}")
    rows = torch.arange(height, device=images.device).unsqueeze(0) - shifts[:, :1]          # (N, H) source row
    cols = torch.arange(width, device=images.device).unsqueeze(0) - shifts[:, 1:]           # (N, W) source column
    inside = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)).unsqueeze(1)
    rows, cols = rows % height, cols % width
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    moved = images[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)      # (N, C, H, W)
    if mode == "wrap":
        return moved
    return torch.where(inside.unsqueeze(1), moved, torch.full_like(moved, fill))


# --------------------------------------------------------------------------- metrics


def accuracy_per_level(predictions: Sequence[Tensor], labels: Tensor) -> list[float]:
    """Accuracy at each level: ``predictions`` one ``(N,)`` class tensor (or ``(N, classes)`` logits) per
    level, ``labels (N,)`` ``-> [accuracy per level]``."""
    out = []
    for level in predictions:
        classes = level.argmax(dim=1) if level.dim() == 2 else level
        if classes.shape != labels.shape:
            raise ValueError(f"predictions {tuple(classes.shape)} do not match labels {tuple(labels.shape)}")
        out.append((classes.cpu() == labels.cpu()).float().mean().item() if len(labels) else float("nan"))
    return out


def area_under_curve(levels: Sequence[float], accuracies: Sequence[float],
                     spacing: Literal["value", "index"] = "value") -> float:
    """Area under the accuracy-vs-level curve (trapezoids), normalized by the span of the levels: the mean
    accuracy over the range, in [0, 1] (1: no damage at any level). ``spacing="index"`` puts the levels at equal
    steps (for grids 1, 2, 4, 8 or severities); one level gives its accuracy."""
    if len(levels) != len(accuracies) or not levels:
        raise ValueError(f"need one accuracy per level, got {len(levels)} levels and {len(accuracies)} accuracies")
    if len(levels) == 1:
        return float(accuracies[0])
    x = torch.arange(len(levels), dtype=torch.float64) if spacing == "index" else \
        torch.tensor(levels, dtype=torch.float64)
    if not bool((x[1:] > x[:-1]).all()):
        raise ValueError(f"levels must increase, got {list(levels)}")
    return float(torch.trapezoid(torch.tensor(accuracies, dtype=torch.float64), x) / (x[-1] - x[0]))


def corruption_error(errors: Sequence[float], reference_errors: Sequence[float]) -> float:
    """Hendrycks & Dietterich's corruption error of one corruption: the model's top-1 errors summed over the
    severities, divided by the reference model's (AlexNet in the paper; here the CNN beside the ViT). 1 is "as
    robust as the reference", below 1 better. Multiply by 100 for the paper's percentages."""
    if len(errors) != len(reference_errors) or not errors:
        raise ValueError("corruption_error needs the errors of both models at the same severities")
    reference = float(sum(reference_errors))
    if reference <= 0:
        raise ValueError("the reference model makes no error at these severities: its CE is undefined")
    return float(sum(errors)) / reference


def relative_corruption_error(errors: Sequence[float], clean_error: float, reference_errors: Sequence[float],
                              reference_clean_error: float) -> float:
    """The paper's *relative* CE: the errors' growth over the clean error, summed over severities, divided by the
    reference's growth, ``sum(E_s - E_clean) / sum(E_ref,s - E_ref,clean)``."""
    if len(errors) != len(reference_errors) or not errors:
        raise ValueError("relative_corruption_error needs the errors of both models at the same severities")
    reference = float(sum(e - reference_clean_error for e in reference_errors))
    if reference <= 0:
        raise ValueError("the reference model loses no accuracy at these severities: its relative CE is undefined")
    return float(sum(e - clean_error for e in errors)) / reference


def mean_corruption_error(result: dict[str, Any], reference: dict[str, Any], relative: bool = False) -> dict[str, Any]:
    """CE per corruption and their mean (mCE) of a ``robustness.json`` record against a reference model's, over
    the corruptions and severities both measured: ``{"corruption_errors": {name: CE}, "mce": mean,
    "severities": [...]}`` (``relative``: the relative CE, :func:`relative_corruption_error`)."""
    ours, theirs = result["tests"]["corruptions"], reference["tests"]["corruptions"]
    severities = [s for s in ours["levels"] if s in theirs["levels"]]
    names = [c for c in ours["curves"] if c in theirs["curves"] and c != "mean"]  # "mean": the average curve
    if not severities or not names:
        raise ValueError("the two records share no corruption at a common severity")

    def errors(record: dict[str, Any], name: str) -> list[float]:
        curve = record["curves"][name]["accuracy"]
        return [1.0 - curve[record["levels"].index(s)] for s in severities]

    per = {}
    for name in names:
        if relative:
            per[name] = relative_corruption_error(errors(ours, name), 1 - result["clean_accuracy"],
                                                  errors(theirs, name), 1 - reference["clean_accuracy"])
        else:
            per[name] = corruption_error(errors(ours, name), errors(theirs, name))
    return {"corruption_errors": per, "mce": sum(per.values()) / len(per), "severities": severities,
            "relative": relative}


# --------------------------------------------------------------------------- the evaluation


def _default_patch_size(side: int) -> int:
    """The occlusion grid of a model without patches of its own: the course's ViT's patch for that image size
    (7 on 28x28 MNIST: a 4x4 grid; 4 on 32x32 CIFAR: 8x8), so a CNN is occluded on the ViT's grid."""
    known = {28: 7, 32: 4}
    if side in known:
        return known[side]
    for patch in range(max(side // 8, 1), side + 1):
        if side % patch == 0:
            return patch
    return side


@dataclass(frozen=True)
class RobustnessSettings:
    """The levels of each test (the defaults, :meth:`for_model`, depend on the image size and channels).

    ``patch_size``: the occlusion grid (a ViT's own patch, so its tokens are the patches; else 7 on 28x28 and 4
    on 32x32 images). ``fractions``: occlusion levels. ``grids``: shuffle grids. ``corruptions``: names in
    :data:`CORRUPTIONS`. ``epsilons``: attack strengths, pixel units on [0, 1]. ``pgd_steps`` of ``2.5 eps /
    steps``, from the image (no random start). ``max_shift``: translation by 1..``max_shift`` pixels. ``tokens``:
    also drop a ViT's patch tokens.
    ``salient``: also occlude most-salient-first.
    """

    patch_size: int
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    grids: tuple[int, ...] = (1, 2, 4, 8)
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    epsilons: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    pgd_steps: int = 5
    max_shift: int = 4
    salient: bool = True
    tokens: bool = False

    @classmethod
    def for_model(cls, model: nn.Module, image_shape: tuple[int, int, int], **overrides: Any) -> RobustnessSettings:
        """Defaults for ``model`` on ``(C, H, W)`` images: a ViT run at its own resolution is occluded on its patch
        grid (and by its tokens); shuffle grids 1, 2, 4 and 7 or 8 (those dividing the side); ε 1-8/255 on
        3-channel images, 0.05-0.3 on 1-channel (MNIST-like: the customary MNIST ε); shifts up to one patch."""
        channels, height, width = image_shape
        side = min(height, width)
        vit = unwrap(model)
        own = isinstance(vit, ViT) and vit.config.input_resolution == vit.config.image_size == side
        patch = vit.config.patch_size if own else _default_patch_size(side)
        epsilons = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255) if channels == 3 else (0.0, 0.05, 0.1, 0.2, 0.3)
        grids = tuple(g for g in (1, 2, 4, 7, 8) if height % g == 0 and width % g == 0)
        settings = cls(patch_size=patch, grids=grids, epsilons=epsilons, max_shift=patch, tokens=own)
        return replace(settings, **overrides)

    def __post_init__(self) -> None:
        if any(not 0 <= f < 1 for f in self.fractions) or list(self.fractions) != sorted(set(self.fractions)):
            raise ValueError(f"occlusion fractions must increase within [0, 1), got {self.fractions}")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruption {', '.join(unknown)}; choose from {', '.join(CORRUPTIONS)}")
        if any(e < 0 for e in self.epsilons) or list(self.epsilons) != sorted(set(self.epsilons)):
            raise ValueError(f"epsilons must increase from >= 0, got {self.epsilons}")
        if self.pgd_steps < 1 or self.max_shift < 0 or self.patch_size < 1:
            raise ValueError("pgd_steps and patch_size must be positive, max_shift >= 0")


def seeded_subset(dataset: ImageTensorDataset, n: int | None, seed: int) -> ImageTensorDataset:
    """A seeded random sample of ``n`` images (in index order), or the whole set when ``n`` is None or at least
    its size. The same seed picks the same images for every model."""
    if n is None or n >= len(dataset):
        return dataset
    if n <= 0:
        raise ValueError(f"the number of images must be positive, got {n}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[:n].sort().values)


def _generator(seed: int, *key: Any) -> torch.Generator:
    """A CPU generator for one test, variant, level and batch: seeded from all of them (CRC32 of their names),
    never from the model, so every model gets the same random damage."""
    text = "/".join(str(k) for k in (seed, *key))
    return torch.Generator().manual_seed(zlib.crc32(text.encode()))


def _steps(tests: Sequence[str], settings: RobustnessSettings, severities: Sequence[int]) -> int:
    """Work per batch for the progress bar, in model evaluations (the clean one included; a PGD attack counts its
    steps too)."""
    occlusion_variants = (2 if settings.salient else 1) * (2 if settings.tokens else 1)
    per_test = {"occlusion": occlusion_variants * len([f for f in settings.fractions if f > 0]),
                "shuffle": len([g for g in settings.grids if g > 1]),
                "corruptions": len(settings.corruptions) * len(severities),
                "adversarial": (2 + settings.pgd_steps) * len([e for e in settings.epsilons if e > 0]),
                "translation": 2 * settings.max_shift}
    return 1 + sum(per_test[t] for t in tests)


class _Evaluation:
    """One robustness evaluation: the model (and its pixel-input wrapper), the settings, and the tally of correct
    and unchanged predictions per ``(test, variant, level)``, summed over the batches fed to :meth:`batch`."""

    def __init__(self, model: nn.Module, dataset: ImageTensorDataset, settings: RobustnessSettings,
                 severities: Sequence[int], device: torch.device, precision: str, seed: int, bar: Any) -> None:
        self.model = model
        self.pixel_model = PixelModel(model, dataset.mean, dataset.std).to(device)
        self.settings, self.severities, self.seed, self.bar = settings, severities, seed, bar
        self.autocast = autocast_context(device, precision)  # resolved once, not per batch
        self.mean = torch.tensor(dataset.mean, device=device)
        self.counts: dict[tuple[str, str, Any], list[int]] = {}
        self.n = self.clean_correct = 0

    def predict(self, images: Tensor) -> Tensor:
        """Predicted classes of pixel images: ``(N, C, H, W) -> (N,)``."""
        with torch.no_grad(), self.autocast:
            return self.pixel_model(images).argmax(dim=1)

    def record(self, test: str, variant: str, level: Any, predictions: Tensor, cost: int = 1) -> None:
        """Tally one level's ``(N,)`` predictions; ``cost``: the evaluations it took (the progress bar's step)."""
        entry = self.counts.setdefault((test, variant, level), [0, 0])
        entry[0] += int((predictions == self.labels).sum())
        entry[1] += int((predictions == self.clean).sum())
        self.bar.update(0 if predictions is self.clean else cost)

    def curve(self, test: str, variant: str, levels: Sequence[Any], spacing: Literal["value", "index"]
              ) -> dict[str, Any]:
        correct = [self.counts[(test, variant, level)][0] / self.n for level in levels]
        same = [self.counts[(test, variant, level)][1] / self.n for level in levels]
        return {"accuracy": correct, "consistency": same,
                "auc": area_under_curve([float(v) for v in levels], correct, spacing)}

    def batch(self, index: int, images: Tensor, labels: Tensor, tests: Sequence[str]) -> None:
        """Run ``tests`` on one batch of pixel images ``(N, C, H, W)`` with ``labels (N,)``."""
        self.index, self.images, self.labels = index, images, labels
        self.clean = self.predict(images)
        self.n += len(labels)
        self.clean_correct += int((self.clean == labels).sum())
        self.bar.update(1)
        for test in tests:
            self.bar.set_description(f"robustness: {test}")
            getattr(self, f"_{test}")()

    def _generator(self, *key: Any) -> torch.Generator:
        return _generator(self.seed, *key, self.index)

    def _occlusion(self) -> None:
        images, settings = self.images, self.settings
        rows, cols = patch_grid_size(images, settings.patch_size)
        orders = {"random": random_patch_order(len(images), rows * cols, self._generator("occlusion")).to(
            images.device)}
        if settings.salient:
            orders["salient"] = salient_patch_order(self.model, self.pixel_model.normalize(images), settings.patch_size)
        kinds = ("pixels", "tokens") if settings.tokens else ("pixels",)
        for name, order in orders.items():
            for fraction in settings.fractions:
                if fraction == 0:
                    for kind in kinds:
                        self.record("occlusion", f"{name}-{kind}", fraction, self.clean)
                    continue
                dropped, keep = occlusion_sets(order, fraction)
                self.record("occlusion", f"{name}-pixels", fraction,
                            self.predict(mask_patches(images, dropped, settings.patch_size, self.mean)))
                if settings.tokens:
                    with torch.no_grad(), self.autocast:
                        logits = drop_tokens_logits(self.model, self.pixel_model.normalize(images), keep)
                    self.record("occlusion", f"{name}-tokens", fraction, logits.argmax(dim=1))

    def _shuffle(self) -> None:
        for grid in self.settings.grids:
            self.record("shuffle", "shuffle", grid, self.clean if grid == 1 else
                        self.predict(shuffle_patches(self.images, grid, self._generator("shuffle", grid))))

    def _corruptions(self) -> None:
        for name in self.settings.corruptions:
            for severity in self.severities:
                damaged = corrupt(self.images, name, severity, self._generator("corruptions", name, severity))
                self.record("corruptions", name, severity, self.predict(damaged))

    def _adversarial(self) -> None:
        images, labels = self.images, self.labels
        with self.autocast:  # FGSM's step is the same for every eps: one gradient
            direction = _input_gradient(self.pixel_model, images, labels).sign()
        for eps in self.settings.epsilons:
            if eps == 0:
                self.record("adversarial", "fgsm", eps, self.clean)
                self.record("adversarial", "pgd", eps, self.clean)
                continue
            self.record("adversarial", "fgsm", eps, self.predict((images + eps * direction).clamp(0, 1)))
            with self.autocast:
                adversarial = pgd(self.pixel_model, images, labels, eps, self.settings.pgd_steps)
            self.record("adversarial", "pgd", eps, self.predict(adversarial), cost=1 + self.settings.pgd_steps)

    def _translation(self) -> None:
        axes = torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1]])
        pick = torch.randint(0, 4, (len(self.images),), generator=self._generator("translation"))
        direction = axes[pick].to(self.images.device)                                  # (N, 2): one axis step each
        for mode in ("wrap", "pad"):
            self.record("translation", mode, 0, self.clean)
            for shift in range(1, self.settings.max_shift + 1):
                self.record("translation", mode, shift, self.predict(translate(self.images, direction * shift, mode)))


def evaluate_robustness(model: nn.Module, dataset: ImageTensorDataset, tests: Sequence[str] = TESTS,
                        severities: Sequence[int] = SEVERITIES, settings: RobustnessSettings | None = None,
                        batch_size: int = 250, device: torch.device | str | None = None, precision: str = "fp32",
                        seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Run ``tests`` on every image of ``dataset`` (a classifier's labelled images; take a sample first with
    :func:`seeded_subset`) and return the record ``vitlab robustness`` writes as ``robustness.json``::

        {"clean_accuracy", "n", "seed", "precision", "tests": {test: {"level": what the levels are,
         "levels": [...], "spacing": "value" | "index", "curves": {variant: {"accuracy": [per level],
         "consistency": [per level], "auc"}}}}, "settings": {...}, "seconds"}

    ``consistency`` is the share of images whose prediction equals the clean one. Levels: occlusion fractions
    (variants ``random-pixels``, ``salient-pixels``, and for a ViT ``random-tokens``, ``salient-tokens``);
    shuffle grids (``shuffle``); corruption severities (one variant per corruption, plus ``mean``); attack ε
    (``fgsm``, ``pgd``); translation shifts in pixels (``wrap``, ``pad``; every image moves along one random axis
    direction, the same for all its shifts). Level 0 (or grid 1) is the clean image.

    The model runs in eval mode under ``precision`` (:func:`vitlab.core.precision.autocast_context`; the
    saliency maps in fp32). Random damage is drawn per test, level and batch from ``seed``: the same seed,
    images and ``batch_size`` give the same damaged images for any model.
    """
    tests = check_tests(tests)
    severities = check_severities(severities)
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("no images to evaluate")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    settings = settings or RobustnessSettings.for_model(model, dataset.image_shape)
    blank = torch.zeros(1, *dataset.image_shape)
    if "occlusion" in tests:
        patch_grid_size(blank, settings.patch_size)
    if "shuffle" in tests:
        for grid in settings.grids:  # every grid must divide the images: fail before the first batch
            shuffle_patches(blank, grid, torch.Generator())
    batches = range(0, len(dataset), batch_size)
    bar = tqdm(total=len(batches) * _steps(tests, settings, severities), desc="robustness", disable=not progress,
               unit="eval")
    evaluation = _Evaluation(model, dataset, settings, severities, device, precision, seed, bar)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        for index, start in enumerate(batches):
            images = dataset.images[start:start + batch_size].to(device).float() / 255.0
            evaluation.batch(index, images, dataset.labels[start:start + batch_size].to(device), tests)
    finally:
        bar.close()
        model.train(was_training)
    result = _result(evaluation, tests, severities, settings, seed, resolve_precision(precision, device),
                     time.perf_counter() - started)
    result["settings"]["batch_size"] = batch_size  # the random damage is drawn per batch
    return result


def _result(evaluation: _Evaluation, tests: Sequence[str], severities: Sequence[int], settings: RobustnessSettings,
            seed: int, precision: str, seconds: float) -> dict[str, Any]:
    """The ``robustness.json`` record of a finished evaluation (see :func:`evaluate_robustness`)."""
    occlusion = [f"{order}-{kind}" for order in ("random", "salient")[: 2 if settings.salient else 1]
                 for kind in ("pixels", "tokens")[: 2 if settings.tokens else 1]]
    blocks: dict[str, tuple[str, list[Any], list[str], Literal["value", "index"]]] = {
        "occlusion": ("fraction of patches removed", list(settings.fractions), occlusion, "value"),
        "shuffle": ("shuffle grid g: g x g blocks", list(settings.grids), ["shuffle"], "index"),
        "corruptions": ("severity", list(severities), list(settings.corruptions), "index"),
        "adversarial": ("L-inf eps, pixel scale [0, 1]", list(settings.epsilons), ["fgsm", "pgd"], "value"),
        "translation": ("shift in pixels", list(range(settings.max_shift + 1)), ["wrap", "pad"], "value"),
    }
    out: dict[str, Any] = {"clean_accuracy": evaluation.clean_correct / evaluation.n, "n": evaluation.n, "seed": seed,
                           "precision": precision, "tests": {}}
    for test in tests:
        level, levels, names, spacing = blocks[test]
        curves = {name: evaluation.curve(test, name, levels, spacing) for name in names}
        if test == "corruptions":
            mean_accuracy = [sum(curves[n]["accuracy"][i] for n in names) / len(names) for i in range(len(levels))]
            curves["mean"] = {"accuracy": mean_accuracy,
                              "auc": area_under_curve([float(s) for s in levels], mean_accuracy, "index")}
        out["tests"][test] = {"level": level, "levels": levels, "spacing": spacing, "curves": curves}
    out["settings"] = {"patch_size": settings.patch_size, "occlusion_fill": "dataset mean",
                       "pgd_steps": settings.pgd_steps, "pgd_step_size": "2.5 * eps / steps",
                       "pgd_random_start": False, "translation_fill": 0.0, "translation_direction":
                       "one random axis direction per image", "corruption_parameters": "CIFAR-10-C (make_cifar_c.py)"}
    out["seconds"] = round(seconds, 2)
    return out


def format_table(result: dict[str, Any]) -> str:
    """The record as a text table: one block per test, one row per variant, accuracy (%) per level, and the
    normalized area under the curve; translation adds the share of predictions left unchanged."""
    lines = [f"clean accuracy {100 * result['clean_accuracy']:.2f}% on {result['n']:,} images"]
    for test, block in result["tests"].items():
        levels = block["levels"]
        labels = [f"{255 * v:.0f}/255" if test == "adversarial" and max(levels) <= 8 / 255 + 1e-9 and v
                  else f"{v:g}" for v in levels]
        width = max(7, *(len(label) + 1 for label in labels))
        lines.append("")
        lines.append(f"{test} ({block['level']})")
        lines.append(f"  {'':<16}" + "".join(f"{label:>{width}}" for label in labels) + f"{'AUC':>{width}}")
        for name, curve in block["curves"].items():
            cells = "".join(f"{100 * a:>{width - 1}.1f}%" for a in curve["accuracy"])
            lines.append(f"  {name:<16}{cells}{100 * curve['auc']:>{width - 1}.1f}%")
        if test == "translation":  # its own measure: the share of predictions a shift leaves unchanged
            for name, curve in block["curves"].items():
                cells = "".join(f"{100 * a:>{width - 1}.1f}%" for a in curve["consistency"])
                lines.append(f"  {name + ' unchanged':<16}{cells}")
    return "\n".join(lines)
