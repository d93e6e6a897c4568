"""Figures for lessons and reports: sample grids, training curves, confusion matrices, patch grids,
and block diagrams of the ViT and of its encoder block drawn by code.

Every function returns the matplotlib ``Figure`` (and never calls ``plt.show``),
so notebooks display it and scripts save it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from torch import Tensor

from .explain import normalize_maps, upsample

__all__ = ["show_images", "plot_history", "plot_confusion", "plot_per_class", "plot_patches", "to_display", "overlay",
           "plot_explanations", "plot_vit_architecture", "plot_norm_placement"]


def to_display(image: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """One image ``(C, H, W)`` (uint8, or normalized float with ``mean``/``std``) -> ``(H, W[, 3])`` in [0, 1]."""
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif mean is not None and std is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    image = image.clamp(0, 1)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def show_images(images: Tensor, titles: Sequence[str] | None = None, ncols: int = 8, suptitle: str | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                title_colors: Sequence[str] | None = None, size: float = 1.4) -> Figure:
    """A grid of images ``(N, C, H, W)`` with optional per-image titles."""
    n = images.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(to_display(images[i], mean, std), cmap="gray", vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9, color=title_colors[i] if title_colors else "black")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_history(history: Sequence[dict[str, Any]], title: str | None = None,
                 scores: Sequence[tuple[str, str]] = (("train_accuracy", "train"), ("val_accuracy", "validation")),
                 score_name: str = "accuracy") -> Figure:
    """Loss and a score per epoch, train vs validation, side by side. ``scores``: the ``(key, label)``
    pairs drawn on the right, in percent (accuracy by default; mIoU or mAP for dense tasks)."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label, style in (("train_loss", "train", "-o"), ("val_loss", "validation", "-s")):
        if all(key in row for row in history):
            ax_loss.plot(epochs, [row[key] for row in history], style, label=label, markersize=4)
    for (key, label), style in zip(scores, ("-o", "-s", "-^", "-v")):
        if all(key in row for row in history):
            ax_acc.plot(epochs, [100 * row[key] for row in history], style, label=label, markersize=4)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel=f"{score_name} (%)", title=score_name[0].upper() + score_name[1:])
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: Sequence[Sequence[int]] | Tensor, classes: Sequence[str], title: str = "Confusion matrix",
                   normalize: bool = False) -> Figure:
    """Seaborn heatmap, rows = true class, columns = predicted class."""
    matrix = np.asarray(torch.as_tensor(confusion).tolist(), dtype=float)
    if normalize:
        matrix = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    size = max(5.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(matrix, annot=len(classes) <= 12, fmt=".2f" if normalize else ".0f", cmap="Blues",
                xticklabels=classes, yticklabels=classes, cbar=True, ax=ax, annot_kws={"fontsize": 8})
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.tight_layout()
    return fig


def plot_per_class(per_class: dict[str, Sequence[float]], classes: Sequence[str],
                   title: str = "Per-class accuracy") -> Figure:
    """Grouped bars of per-class accuracy for one or more models (``{label: accuracies}``)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(classes) + 2), 3.8))
    width = 0.8 / len(per_class)
    x = np.arange(len(classes))
    for i, (label, values) in enumerate(per_class.items()):
        ax.bar(x + i * width - 0.4 + width / 2, 100 * np.asarray(values), width, label=label)
    low = min(100 * min(v) for v in per_class.values())
    ax.set(xticks=x, xlabel="class", ylabel="accuracy (%)", title=title, ylim=(max(0.0, low - 5), 100.5))
    ax.set_xticklabels(classes, rotation=30 if max(len(c) for c in classes) > 3 else 0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_patches(image: Tensor, patch_size: int, title: str | None = None) -> Figure:
    """One image ``(C, H, W)`` shown whole with the patch grid, and as its separate patches."""
    display = to_display(image)
    h, w = display.shape[:2]
    rows, cols = h // patch_size, w // patch_size
    fig = plt.figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(display, cmap="gray")
    for k in range(1, rows):
        ax.axhline(k * patch_size - 0.5, color="red", linewidth=0.8)
    for k in range(1, cols):
        ax.axvline(k * patch_size - 0.5, color="red", linewidth=0.8)
    ax.set_title(title or f"{h}x{w} image, {patch_size}x{patch_size} patches")
    ax.axis("off")
    grid = fig.add_gridspec(rows, cols, left=0.55, right=0.98, top=0.9, bottom=0.1, wspace=0.08, hspace=0.08)
    for r in range(rows):
        for c in range(cols):
            sub = fig.add_subplot(grid[r, c])
            sub.imshow(display[r * patch_size:(r + 1) * patch_size, c * patch_size:(c + 1) * patch_size],
                       cmap="gray", vmin=0, vmax=1)
            sub.axis("off")
    fig.text(0.765, 0.94, f"{rows * cols} patches, row by row", ha="center")
    return fig


def overlay(image: Tensor, heatmap: Tensor, ax: Any = None, alpha: float = 0.5, cmap: str = "jet",
            title: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Any:
    """Draw ``heatmap`` ``(h, w)`` (any resolution; upsampled bilinearly) over ``image`` ``(C, H, W)``.

    Returns the axes. The heat map is min-max scaled to [0, 1] so maps of different methods compare.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    picture = to_display(image, mean, std)
    height, width = picture.shape[:2]
    heat = heatmap.detach().float().cpu()[None]
    if tuple(heat.shape[1:]) != (height, width):
        heat = upsample(heat, (height, width))
    heat = normalize_maps(heat)[0]
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
    ax.imshow(heat.numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_explanations(images: Tensor, maps: dict[str, Tensor], titles: Sequence[str] | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      suptitle: str | None = None) -> Figure:
    """One row per image: the image, then one overlay per method (``{method: (N, h, w)}``)."""
    n = images.shape[0]
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols, 2.3 * n + (0.4 if suptitle else 0)), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(to_display(images[i], mean, std), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].axis("off")
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=9)
        for j, (method, values) in enumerate(maps.items(), start=1):
            overlay(images[i], values[i], axes[i, j], mean=mean, std=std, title=method if i == 0 else None)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ diagrams
def _box(ax: Any, x: float, y: float, w: float, h: float, text: str, color: str, fontsize: float = 9) -> None:
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="black", linewidth=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], color: str = "black") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.0,
                                                           shrinkA=0, shrinkB=0))


def plot_vit_architecture(image_size: int = 28, patch_size: int = 4, dim: int = 64, depth: int = 6,
                          num_classes: int = 10) -> Figure:
    """The ViT (Dosovitskiy et al. 2021) as a labelled block diagram, with the shapes of one image
    for the given sizes: patches -> linear map -> class token -> positions -> encoder blocks -> head.
    Drawn by code so that it stays in step with the lessons; returns the figure."""
    patches = (image_size // patch_size) ** 2
    fig, ax = plt.subplots(figsize=(11, 4.6))
    steps = [
        ("image", f"{image_size}×{image_size}", "#dddddd"),
        ("patchify", f"{patches} patches of\n{patch_size}×{patch_size} pixels", "#f6d7a7"),
        ("linear map E", f"{patches} tokens × {dim}", "#f6d7a7"),
        ("+ class token", f"{patches + 1} × {dim}", "#c9e4c5"),
        ("+ positions", f"{patches + 1} × {dim}", "#c9e4c5"),
        (f"{depth} × encoder\nblock", f"{patches + 1} × {dim}", "#b8d4f0"),
        ("LayerNorm,\ntoken 0", f"{dim}", "#e8c8e8"),
        ("linear head", f"{num_classes} logits", "#e8c8e8"),
    ]
    xs = np.linspace(0.7, 12.3, len(steps))
    for i, (x, (name, shape, color)) in enumerate(zip(xs, steps)):
        _box(ax, x, 2.6, 1.35, 0.9, name, color)
        ax.text(x, 1.9, shape, ha="center", va="top", fontsize=8, color="#333333")
        if i:
            _arrow(ax, (xs[i - 1] + 0.68, 2.6), (x - 0.68, 2.6))
    # The encoder block, opened up underneath its box.
    bx = xs[5]
    inner = [("LayerNorm", "#ffffff"), ("multi-head\nattention", "#b8d4f0"), ("+", "#ffffff"),
             ("LayerNorm", "#ffffff"), ("MLP", "#b8d4f0"), ("+", "#ffffff")]
    ix = np.linspace(4.2, 11.6, len(inner))
    half = [0.21 if name == "+" else 0.53 for name, _ in inner]     # half widths of the boxes
    ax.add_patch(plt.Rectangle((ix[0] - 1.15, -0.45), ix[-1] - ix[0] + 1.75, 1.55, fill=False, ls="--", lw=0.8))
    ax.plot([bx - 0.67, ix[0] - 1.15], [2.15, 1.1], ls=":", color="gray", lw=0.8)
    ax.plot([bx + 0.67, ix[-1] + 0.6], [2.15, 1.1], ls=":", color="gray", lw=0.8)
    _arrow(ax, (ix[0] - 1.05, 0.2), (ix[0] - half[0], 0.2))
    for i, (x, (name, color)) in enumerate(zip(ix, inner)):
        _box(ax, x, 0.2, 2 * half[i], 0.55, name, color, fontsize=7.5)
        if i:
            _arrow(ax, (ix[i - 1] + half[i - 1], 0.2), (x - half[i], 0.2))
    # Residual connections: from the block's input (and the first sum) around each branch into its "+".
    for begin, add in ((ix[0] - 0.85, ix[2]), ((ix[2] + ix[3]) / 2, ix[5])):
        ax.plot([begin, begin, add], [0.2, 0.8, 0.8], color="tab:red", lw=1.0)
        _arrow(ax, (add, 0.8), (add, 0.2 + 0.28), color="tab:red")
    ax.text(ix[0] - 1.1, -0.6, "inside each block (pre-norm); red: residual connections", fontsize=7.5,
            color="tab:red", va="top")
    ax.set_xlim(-0.2, 13.2)
    ax.set_ylim(-0.95, 3.3)
    ax.axis("off")
    ax.set_title(f"Vision Transformer: {image_size}×{image_size} image, {patch_size}×{patch_size} patches, "
                 f"width {dim}, {depth} blocks", fontsize=11)
    fig.tight_layout()
    return fig


def plot_norm_placement() -> Figure:
    """Post-norm (the original Transformer: add, then LayerNorm) beside pre-norm (ViT: LayerNorm inside
    each branch, a clean residual path from input to output), as two block diagrams."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 5))
    # title: (boxes top to bottom, residual connections as (box before the branch, its "+"))
    layouts = {
        "post-norm (Transformer, 2017)": (["x", "attention", "+", "LayerNorm", "MLP", "+", "LayerNorm", "out"],
                                          [(0, 2), (3, 5)]),
        "pre-norm (ViT, 2021)": (["x", "LayerNorm", "attention", "+", "LayerNorm", "MLP", "+", "out"],
                                 [(0, 3), (3, 6)]),
    }
    colors = {"attention": "#b8d4f0", "MLP": "#b8d4f0", "LayerNorm": "#f6d7a7", "+": "#ffffff", "x": "#dddddd",
              "out": "#dddddd"}
    for ax, (title, (layers, residuals)) in zip(axes, layouts.items()):
        ys = np.linspace(7.2, 0.3, len(layers))
        for i, (y, name) in enumerate(zip(ys, layers)):
            _box(ax, 1.5, y, 0.5 if name == "+" else 1.9, 0.55, name, colors[name])
            if i:
                _arrow(ax, (1.5, ys[i - 1] - 0.3), (1.5, y + 0.3))
        for begin, add in residuals:          # red: from below a box, around the branch, into "+"
            top, bottom = ys[begin] - 0.35, ys[add]
            ax.plot([1.5, 2.9, 2.9], [top, top, bottom], color="tab:red", lw=1.2)
            _arrow(ax, (2.9, bottom), (1.78, bottom), color="tab:red")
        ax.set_xlim(-0.2, 3.2)
        ax.set_ylim(-0.3, 7.8)
        ax.axis("off")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Where the LayerNorm goes (red: the residual path)", fontsize=11)
    fig.tight_layout()
    return fig
