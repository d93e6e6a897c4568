"""Cutting images into patches and mapping each patch to a token.

A ViT never sees pixels directly: it sees a sequence of flattened, non-overlapping
``p x p`` patches, each linearly projected to the model's hidden size. This module
holds the vectorized ``patchify`` (one reshape + permute, no Python loops), its
inverse ``unpatchify``, and :class:`PatchEmbedding`, the learnable linear map.

The slow double loop from the original walkthrough lives in lesson 01, beside
this version, and the tests prove the two agree.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["patchify", "unpatchify", "num_patches", "check_patch_size", "check_image_batch", "require_float_images",
           "PatchEmbedding"]


def check_patch_size(image_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Return the patch grid ``(H/p, W/p)``, or raise ``ValueError`` if ``p`` does not divide the image.

    A ViT cannot silently drop the border pixels that a non-dividing patch size
    would leave over, so this is an error rather than a crop.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if patch_size <= 0:
        raise ValueError(f"patch size must be a positive integer, got {patch_size}")
    for side_name, side in (("height", height), ("width", width)):
        if side % patch_size != 0:
            raise ValueError(
                f"patch size {patch_size} does not divide the image {side_name} {side}: "
                f"choose a patch size among the divisors of {side} "
                f"({', '.join(str(d) for d in range(1, side + 1) if side % d == 0)})"
            )
    return height // patch_size, width // patch_size


def require_float_images(images: Tensor) -> None:
    """Refuse a ``uint8`` (or other integer) batch with a message saying how to normalize it."""
    if not images.is_floating_point():
        raise ValueError(
            f"model got {images.dtype} images; it expects normalized float images: use "
            "dataset.normalized(indices), or vitlab.data.normalize(images, mean, std) for a uint8 batch"
        )


def check_image_batch(images: Tensor, in_channels: int, image_size: tuple[int, int] | None = None) -> None:
    """Check a model's input batch ``(N, C, H, W)``: float (normalized), ``in_channels`` channels and,
    when given, ``image_size``. Every vitlab model calls this first, so bad input gets one clear
    ``ValueError`` instead of a failure deep inside a matmul."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    require_float_images(images)
    if images.shape[1] != in_channels:
        raise ValueError(
            f"model expects {in_channels}-channel images but got {images.shape[1]} channels "
            f"(input shape {tuple(images.shape)}); convert the images or build the model with "
            f"in_channels={images.shape[1]}"
        )
    if image_size is not None and tuple(images.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"model expects {image_size[0]}x{image_size[1]} images but got "
            f"{images.shape[-2]}x{images.shape[-1]}; resize the images or build the model for that size"
        )


def num_patches(image_size: int | tuple[int, int], patch_size: int) -> int:
    """Number of patches (tokens, before the class token) for an image size and patch size."""
    rows, cols = check_patch_size(image_size, patch_size)
    return rows * cols


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut a batch of images into flattened, non-overlapping square patches.

    Shapes: ``(N, C, H, W) -> (N, H/p * W/p, C*p*p)``.

    Patches are ordered row by row (left to right, top to bottom) and each patch
    is flattened in ``(C, p, p)`` order, exactly like the walkthrough's loop.
    """
    if images.dim() != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    rows, cols = check_patch_size((h, w), patch_size)
    p = patch_size
    # (N, C, rows, p, cols, p) -> (N, rows, cols, C, p, p): the grid first, then each patch's pixels.
    patches = images.reshape(n, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, rows * cols, c * p * p)


def unpatchify(patches: Tensor, patch_size: int, image_size: int | tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`.

    Shapes: ``(N, H/p * W/p, C*p*p) -> (N, C, H, W)``.
    """
    rows, cols = check_patch_size(image_size, patch_size)
    n, count, features = patches.shape
    p = patch_size
    if count != rows * cols or features != channels * p * p:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit a {rows}x{cols} grid of "
            f"{channels}x{p}x{p} patches (expected (N, {rows * cols}, {channels * p * p}))"
        )
    grid = patches.reshape(n, rows, cols, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, channels, rows * p, cols * p)


class PatchEmbedding(nn.Module):
    """Patchify, then map each flattened patch linearly to the hidden size.

    Shapes: ``(N, C, H, W) -> (N, P, dim)`` with ``P = H/p * W/p``.

    This is the same as a ``Conv2d`` with kernel and stride ``p``; it is written
    as patchify + ``nn.Linear`` because that is how the lesson explains it.
    """

    def __init__(self, image_size: int | tuple[int, int], patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.grid_size = check_patch_size(image_size, patch_size)
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)

    def forward(self, images: Tensor, any_size: bool = False) -> Tensor:
        """``(N, C, H, W) -> (N, P, dim)``; raises ``ValueError`` on a wrong dtype, channel count or image size
        (``any_size=True``: any size the patch size divides, with ``P`` patches of that grid)."""
        check_image_batch(images, self.in_channels, None if any_size else self.image_size)
        return self.proj(patchify(images, self.patch_size))
