"""Where does the model look? Attention maps, attention rollout and Grad-CAM.

* :func:`attention_maps`: the softmax weights of every block and head,
  ``(layers, N, heads, T, T)``, from the model's explicit attention path. The
  weights are a by-product of the same computation, so the logits are the
  ones the fast path gives (a test checks it).
* :func:`attention_rollout` (Abnar & Zuidema 2020): fuse the heads of each
  layer, add the identity for the residual connection, renormalize each row,
  and multiply the layers together; the class token's row, over the patches,
  is a map of how much each patch can have flowed into the prediction.
* :func:`grad_cam` (Selvaraju et al. 2017): weight each feature channel of a
  layer by the average gradient of the class score, sum, ReLU. For a ViT the
  "feature map" is the patch tokens entering a block (reshaped to the patch
  grid); for a CNN, the last convolutional layer's output.

All maps are returned per patch (or per CNN cell) and can be brought to image
size with :func:`upsample`. None of them is a faithful account of the model's
reasoning: see lesson 09 for what they do and do not show.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.io import unwrap
from ..layers.patches import require_float_images

__all__ = ["attention_maps", "rollout_matrix", "attention_rollout", "class_token_attention", "grad_cam",
           "default_gradcam_layer", "explanations", "upsample", "normalize_maps", "METHODS"]

HeadFusion = Literal["mean", "max", "min"]


def _has_attention_maps(model: nn.Module) -> bool:
    """Whether the model's class declares ``has_attention_maps`` (see :mod:`vitlab.registry`)."""
    return bool(getattr(type(unwrap(model)), "has_attention_maps", False))


@torch.no_grad()
def attention_maps(model: nn.Module, images: Tensor) -> Tensor:
    """Attention weights of every block and head.

    Shapes: ``(N, C, H, W) -> (layers, N, heads, T, T)`` with ``T = patches + 1`` (index 0 is the
    class token). Each row sums to 1. The model is put in eval mode for the call.
    """
    was_training = model.training
    model.eval()
    _, maps = model(images, return_attention=True)
    model.train(was_training)
    return maps


def _fuse_heads(maps: Tensor, head_fusion: HeadFusion) -> Tensor:
    """``(layers, N, heads, T, T) -> (layers, N, T, T)``."""
    if head_fusion == "mean":
        return maps.mean(dim=2)
    if head_fusion == "max":
        return maps.amax(dim=2)
    if head_fusion == "min":
        return maps.amin(dim=2)
    raise ValueError(f"unknown head fusion {head_fusion!r}: choose 'mean', 'max' or 'min'")


def rollout_matrix(maps: Tensor, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Joint attention from the input tokens to the last layer's tokens.

    Shapes: ``(layers, N, heads, T, T) -> (N, T, T)``; every row sums to 1.

    Per layer: fuse the heads, optionally zero the weakest ``discard_ratio`` of the weights
    (never the class token's attention to itself), add the identity (the residual connection carries each
    token through unchanged), renormalize rows, and multiply with the rollout so far.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    layers, n, _, t, _ = maps.shape
    fused = _fuse_heads(maps.float(), head_fusion)
    identity = torch.eye(t, device=maps.device, dtype=fused.dtype)
    result = identity.expand(n, t, t).clone()
    for layer in range(layers):
        attention = fused[layer].clone()
        if discard_ratio > 0:
            flat = attention.view(n, -1)
            k = int(flat.shape[1] * discard_ratio)
            if k > 0:
                candidates = flat.clone()
                candidates[:, 0] = float("inf")  # never drop the class token's attention to itself
                lowest = candidates.topk(k, dim=1, largest=False).indices
                flat.scatter_(1, lowest, 0.0)
        mixed = 0.5 * attention + 0.5 * identity
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    return result


def attention_rollout(maps: Tensor, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0,
                      image_size: int | tuple[int, int] | None = None, token: int = 0,
                      num_prefix_tokens: int = 1) -> Tensor:
    """Attention rollout map of the class token (or another prefix ``token``, e.g. DeiT's distillation
    token at 1) over the patches.

    Shapes: ``(layers, N, heads, T, T) -> (N, g, g)`` (patch grid, ``g*g = T - num_prefix_tokens``), or
    ``(N, H, W)`` when ``image_size`` is given. Each map is scaled to a maximum of 1.
    """
    joint = rollout_matrix(maps, head_fusion, discard_ratio)
    grid = _grid_side(joint.shape[-1] - num_prefix_tokens)
    patch_map = joint[:, token, num_prefix_tokens:].reshape(-1, grid, grid)
    patch_map = patch_map / patch_map.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return upsample(patch_map, image_size) if image_size is not None else patch_map


def class_token_attention(maps: Tensor, layer: int = -1, head: int | None = None, token: int = 0,
                          num_prefix_tokens: int = 1) -> Tensor:
    """Raw attention of the class token (or another prefix ``token``) to the patches in one layer
    (one head, or the head mean).

    Shapes: ``(layers, N, heads, T, T) -> (N, g, g)``.
    """
    weights = maps[layer]
    weights = weights.mean(dim=1) if head is None else weights[:, head]
    grid = _grid_side(weights.shape[-1] - num_prefix_tokens)
    return weights[:, token, num_prefix_tokens:].reshape(-1, grid, grid)


def default_gradcam_layer(model: nn.Module, layer: int = -1) -> nn.Module:
    """The module whose output Grad-CAM uses by default: the model's ``gradcam_layer(layer)``.

    ViT: ``blocks[layer].norm1``, the normalized tokens entering that block's attention. (The
    output of the *last* block is useless: the head reads only the class token there, so the
    patch tokens get zero gradient.) CNN: its last convolutional stage.
    """
    target = getattr(unwrap(model), "gradcam_layer", None)
    if target is None:
        raise ValueError(f"{type(model).__name__} has no default Grad-CAM layer: pass layer=<module>")
    return target(layer)


def grad_cam(model: nn.Module, images: Tensor, target: Tensor | int | None = None,
             layer: nn.Module | int | None = None) -> Tensor:
    """Grad-CAM maps for a ViT or a CNN.

    Shapes: ``(N, C, H, W) -> (N, g, g)`` for a ViT (one value per patch) or ``(N, h, w)`` for
    a CNN (the layer's spatial size); non-negative, not normalized (see :func:`normalize_maps`).

    ``target``: class index per image (default: the predicted class). ``layer``: a module,
    or for a ViT the index of the block whose input tokens are used (default: the last).
    """
    require_float_images(images)  # before requires_grad_, which would fail with a cryptic message
    module = default_gradcam_layer(model, layer if isinstance(layer, int) else -1) \
        if layer is None or isinstance(layer, int) else layer
    captured: dict[str, Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        output.retain_grad()
        captured["activations"] = output

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            images = images.detach().requires_grad_(True)  # gradients flow even if every weight is frozen
            logits = model(images)
            if target is None:
                target = logits.argmax(dim=1)
            elif isinstance(target, int):
                target = torch.full((len(images),), target, dtype=torch.long, device=logits.device)
            score = logits.gather(1, target.view(-1, 1).to(logits.device)).sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
        model.train(was_training)
    activations, gradients = captured["activations"].detach(), captured["activations"].grad.detach()
    if activations.dim() == 3:  # ViT tokens (N, T, D): drop the class (and distillation) token, grid back
        prefix = getattr(unwrap(model), "num_prefix_tokens", 1)
        activations, gradients = activations[:, prefix:], gradients[:, prefix:]
        grid = _grid_side(activations.shape[1])
        activations = activations.transpose(1, 2).reshape(len(images), -1, grid, grid)
        gradients = gradients.transpose(1, 2).reshape(len(images), -1, grid, grid)
    weights = gradients.mean(dim=(2, 3), keepdim=True)            # (N, channels, 1, 1)
    return F.relu((weights * activations).sum(dim=1))             # (N, g, g)


METHODS = ("rollout", "attention", "gradcam")


def explanations(model: nn.Module, images: Tensor, methods: list[str] | tuple[str, ...] = ("rollout",),
                 layer: int = -1, head: int | None = None, discard_ratio: float = 0.0) -> dict[str, Tensor]:
    """Maps by several methods at once, titled for a figure (see :func:`vitlab.plots.plot_explanations`).

    ``methods``: any of ``rollout``, ``attention`` (one layer's class-token attention; ``head`` or the
    head mean) and ``gradcam`` (``layer``: the ViT block, ignored for CNNs). Shapes: ``(N, C, H, W)``
    -> ``{title: (N, g, g)}``. Methods that need attention weights are refused for models without them.
    """
    maps: dict[str, Tensor] = {}
    prefix = getattr(unwrap(model), "num_prefix_tokens", 1)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: choose {', '.join(METHODS)}")
        if method in ("rollout", "attention") and not _has_attention_maps(model):
            raise ValueError(f"method {method} needs attention weights, which {type(unwrap(model)).__name__} "
                             "does not have; use gradcam")
        if method == "rollout":
            maps["attention rollout"] = attention_rollout(attention_maps(model, images), discard_ratio=discard_ratio,
                                                          num_prefix_tokens=prefix)
        elif method == "attention":
            which = "mean of heads" if head is None else f"head {head}"
            maps[f"attention, layer {layer}, {which}"] = class_token_attention(attention_maps(model, images), layer,
                                                                               head, num_prefix_tokens=prefix)
        else:
            maps["Grad-CAM"] = grad_cam(model, images, layer=layer)
    return maps


def normalize_maps(maps: Tensor) -> Tensor:
    """Scale each map to [0, 1] (min-max per map). Shapes: ``(N, h, w) -> (N, h, w)``."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-7)


def upsample(maps: Tensor, image_size: int | tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Resize per-patch maps to the image. Shapes: ``(N, g, g) -> (N, H, W)``.

    ``mode="bilinear"`` gives smooth maps; ``"nearest"`` keeps each patch one flat block, so the grid
    the model actually scored stays visible (smooth blobs suggest detail a 4x4 map does not have)."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    options = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode=mode, **options).squeeze(1)


def _grid_side(patches: int) -> int:
    side = int(round(patches ** 0.5))
    if side * side != patches:
        raise ValueError(f"{patches} patch tokens do not form a square grid")
    return side
