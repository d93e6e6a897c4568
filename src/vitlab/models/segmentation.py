"""Semantic segmentation with a ViT encoder: Segmenter (Strudel et al. 2021).

One label per pixel instead of one per image. The encoder is a plain :class:`~vitlab.model.ViT`
(its class token is kept inside the encoder, as in Segmenter, and dropped after it); a decoder turns
the ``P = g x g`` patch tokens into ``K`` class scores per patch, which are upsampled to pixels::

    images (N, C, H, W) -> encoder -> patch tokens (N, P, D) -> decoder -> (N, K, g, g) -> upsample -> (N, K, H, W)

Two decoders, as in the paper:

* ``linear``: one linear layer per patch token, ``(N, P, D) -> (N, P, K)``;
* ``mask`` (the mask transformer): ``K`` learned class embeddings join the (projected) patch tokens
  in ``decoder_depth`` transformer blocks; each class's mask is then the scalar product of its
  L2-normalized embedding with every L2-normalized patch token, ``(N, P, D') @ (N, D', K)``,
  followed by a LayerNorm over the classes.

The loss is the pixel-wise cross-entropy; the metric is the intersection over union per class,
``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` accumulated over the whole split, and its mean (mIoU), from
torchmetrics (cross-checked against a hand computation in the tests and in lesson 16).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.configs import ConfigError
from ..layers.attention import check_heads
from ..layers.encoder import EncoderBlock, init_transformer_weights
from .registry import register_model
from .vit import ViT, ViTConfig

__all__ = ["SegmenterConfig", "Segmenter", "LinearDecoder", "MaskTransformerDecoder", "segmentation_loss",
           "SegmentationMetrics", "encoder_config", "encoder_no_weight_decay"]


def encoder_config(config: ViTConfig) -> ViTConfig:
    """The plain feature-extracting ViT inside a dense model: the config's ViT fields, no head."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(ViTConfig)}
    return ViTConfig(**{**fields, "num_classes": 0, "representation_size": None})


def encoder_no_weight_decay(encoder: ViT, prefix: str = "encoder.") -> set[str]:
    """The encoder's class token and position table, named as the dense model names them."""
    return {prefix + name for name in encoder.no_weight_decay()}


@dataclass
class SegmenterConfig(ViTConfig):
    """A ViT encoder (the :class:`~vitlab.model.ViTConfig` fields; ``num_classes`` counts the
    segmentation classes, background included) and a Segmenter decoder."""

    image_size: int = 56
    patch_size: int = 7
    num_classes: int = 11
    decoder: Literal["linear", "mask"] = "linear"
    decoder_depth: int = 2
    decoder_heads: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 2:
            raise ConfigError(f"segmentation needs at least 2 classes (background and one more), got "
                              f"{self.num_classes}")
        if self.decoder == "mask":
            if self.decoder_depth < 1:
                raise ConfigError(f"the mask transformer needs decoder_depth >= 1, got {self.decoder_depth}")
            check_heads(self.dim, self.decoder_heads)


class LinearDecoder(nn.Module):
    """Segmenter's linear decoder: class scores per patch token. ``(N, P, D) -> (N, K, g, g)``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, num_classes)

    def forward(self, patches: Tensor, grid: int) -> Tensor:
        n = patches.shape[0]
        return self.head(patches).transpose(1, 2).reshape(n, -1, grid, grid)


class MaskTransformerDecoder(nn.Module):
    """Segmenter's mask transformer. ``(N, P, D) -> (N, K, g, g)`` class masks.

    ``K`` learned class embeddings are appended to the projected patch tokens and processed together
    by ``depth`` transformer blocks, so each class embedding gathers evidence from the whole image;
    the mask of class ``k`` at patch ``i`` is then ``<patch_i, class_k>`` of the two L2-normalized
    vectors (a cosine similarity in ``[-1, 1]``), normalized over the classes by a LayerNorm.
    """

    def __init__(self, dim: int, num_classes: int, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(dim, dim)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_ratio, drop_path=drop_path, norm_eps=norm_eps)
                                    for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=norm_eps)
        # Segmenter's projections are plain matrices scaled by 1/sqrt(D) (no bias).
        self.proj_patch = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))
        self.proj_classes = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim))
        self.mask_norm = nn.LayerNorm(num_classes, eps=norm_eps)
        self.apply(init_transformer_weights)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, patches: Tensor, grid: int) -> Tensor:
        n, p, _ = patches.shape
        x = torch.cat([self.proj_dec(patches), self.cls_emb.expand(n, -1, -1)], dim=1)    # (N, P + K, D)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patch_features = F.normalize(x[:, :p] @ self.proj_patch, dim=-1)                   # (N, P, D)
        class_features = F.normalize(x[:, p:] @ self.proj_classes, dim=-1)                 # (N, K, D)
        masks = self.mask_norm(patch_features @ class_features.transpose(1, 2))           # (N, P, K)
        return masks.transpose(1, 2).reshape(n, self.num_classes, grid, grid)


class Segmenter(nn.Module):
    """ViT encoder + Segmenter decoder. Shapes: ``(N, C, H, W) -> (N, num_classes, H, W)`` logits."""

    family = "segmenter"
    task = "segment"
    config_class = SegmenterConfig
    has_attention_maps = False  # vitlab explain draws classification maps; see lesson 16 for dense outputs

    def __init__(self, config: SegmenterConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or SegmenterConfig(), **overrides)
        self.config = config
        self.encoder = ViT(encoder_config(config))
        if config.decoder == "linear":
            self.decoder: nn.Module = LinearDecoder(config.dim, config.num_classes)
            self.decoder.apply(init_transformer_weights)
        else:
            self.decoder = MaskTransformerDecoder(config.dim, config.num_classes, config.decoder_depth,
                                                  config.decoder_heads, norm_eps=config.norm_eps)

    @property
    def grid(self) -> int:
        return self.config.image_size // self.config.patch_size

    def no_weight_decay(self) -> set[str]:
        """The encoder's class token and position table, and the mask transformer's class embeddings."""
        names = encoder_no_weight_decay(self.encoder)
        return names | ({"decoder.cls_emb"} if self.config.decoder == "mask" else set())

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        return self.encoder.gradcam_layer(layer)

    def patch_tokens(self, images: Tensor) -> Tensor:
        """The encoder's output without its class token. ``(N, C, H, W) -> (N, P, D)``."""
        return self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens:]

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, K, H, W)`` per-pixel class logits (bilinear upsampling of the patch grid)."""
        coarse = self.decoder(self.patch_tokens(images), self.grid)                        # (N, K, g, g)
        return F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Pixel-wise cross-entropy. ``logits (N, K, H, W)``, ``masks (N, H, W)`` int64 -> ``()``."""
    if logits.shape[-2:] != masks.shape[-2:] or logits.shape[0] != masks.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} do not match")
    return F.cross_entropy(logits.float(), masks)


class SegmentationMetrics:
    """Per-class IoU, mIoU and pixel accuracy accumulated over batches (torchmetrics underneath).

    ``update(logits (N, K, H, W) or predictions (N, H, W), masks (N, H, W))``; ``compute()`` returns
    ``{"miou", "miou_objects" (classes after the first, i.e. without background), "per_class_iou"
    (list), "pixel_accuracy", "confusion" (K x K, rows = true class)}``. A class absent from both the
    masks and the predictions has no IoU (NaN) and is left out of the means.
    """

    def __init__(self, num_classes: int) -> None:
        # lazy: torchmetrics takes a second to import, and only the dense tasks need it
        from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

        self.num_classes = num_classes
        self._iou = MulticlassJaccardIndex(num_classes, average="none")
        self._confusion = MulticlassConfusionMatrix(num_classes)

    def update(self, outputs: Tensor, masks: Tensor) -> None:
        predictions = (outputs.argmax(dim=1) if outputs.dim() == 4 else outputs).reshape(-1).cpu()
        targets = masks.reshape(-1).cpu()
        self._iou.update(predictions, targets)
        self._confusion.update(predictions, targets)

    def compute(self) -> dict[str, Any]:
        confusion = self._confusion.compute().double()
        iou = self._iou.compute().double()
        iou[confusion.sum(0) + confusion.sum(1) == 0] = float("nan")  # never seen, never predicted: undefined
        valid = ~iou.isnan()
        objects = valid.clone()
        objects[0] = False
        return {"miou": iou[valid].mean().item(), "miou_objects": iou[objects].mean().item(),
                "per_class_iou": iou.tolist(), "pixel_accuracy": (confusion.diag().sum() / confusion.sum()).item(),
                "confusion": confusion.long().tolist()}


#: The encoder of the MNIST-canvas presets (56 x 56, 7 x 7 patches: the grid of the shipped MNIST ViT's patches);
# the encoder is vit_mnist's (dim 64, depth 6, 4 heads).
CANVAS_ENCODER = dict(image_size=56, in_channels=1, patch_size=7, dim=64, depth=6, heads=4, mlp_ratio=2.0)
_RECIPE = {"epochs": 12, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0}
register_model("segmenter_linear_canvas", Segmenter,
               SegmenterConfig(**CANVAS_ENCODER, num_classes=11, decoder="linear"),
               recipe=_RECIPE, description="Segmenter, linear decoder, for MNIST canvases (56x56, 11 classes)")
register_model("segmenter_mask_canvas", Segmenter,
               SegmenterConfig(**CANVAS_ENCODER, num_classes=11, decoder="mask"),
               recipe=_RECIPE, description="Segmenter, mask-transformer decoder, for MNIST canvases")
