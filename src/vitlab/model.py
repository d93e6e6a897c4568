"""The full Vision Transformer (Dosovitskiy et al. 2021), its config and named presets.

Pipeline, with shapes for a batch of ``N`` images of ``C x H x W`` and patch size ``p``::

    images (N, C, H, W)
      -> PatchEmbedding          (N, P, dim)        P = H/p * W/p
      -> ClassToken              (N, P + 1, dim)
      -> positional encoding     (N, P + 1, dim)
      -> depth x EncoderBlock    (N, P + 1, dim)
      -> LayerNorm, pool         (N, dim)           class token (or mean of patch tokens)
      -> Linear head             (N, classes)       logits (no softmax: CrossEntropyLoss wants logits)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .encoder import EncoderBlock
from .patches import PatchEmbedding, check_patch_size
from .positional import PositionalKind, make_positional_encoding
from .tokens import ClassToken

__all__ = ["ViTConfig", "ViT", "PRESETS", "create_model", "preset_config", "count_parameters"]


@dataclass
class ViTConfig:
    """Everything needed to rebuild a :class:`ViT`; saved as ``config.json`` beside the weights."""

    image_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    num_classes: int = 10
    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    positional: PositionalKind = "learned"
    pool: Literal["cls", "mean"] = "cls"
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        check_patch_size(self.image_size, self.patch_size)
        if self.dim % self.heads != 0:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.positional not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"unknown positional encoding {self.positional!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {self.pool!r}: choose 'cls' or 'mean'")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


#: Named configurations. ``vit_seed`` is the original walkthrough's tiny model.
PRESETS: dict[str, ViTConfig] = {
    # The walkthrough: 28x28 digits, 4x4 patches -> 7x7 = 49 tokens, hidden size 8, 2 blocks, 2 heads.
    "vit_seed": ViTConfig(image_size=28, in_channels=1, patch_size=4, dim=8, depth=2, heads=2,
                          mlp_ratio=4.0, positional="sinusoidal"),
    # The default MNIST model trained by `make train` (about 0.2M parameters). 7x7 patches give
    # 16 tokens: about 3x the training throughput of 4x4 patches on a CPU, and with the digits
    # augmentation it generalizes better in the same time (see README, "How the recipe was tuned").
    "vit_mnist": ViTConfig(image_size=28, in_channels=1, patch_size=7, dim=64, depth=6, heads=4,
                           mlp_ratio=2.0, positional="learned"),
    # CIFAR-sized: 32x32 RGB, 4x4 patches -> 64 tokens.
    "vit_cifar": ViTConfig(image_size=32, in_channels=3, patch_size=4, dim=192, depth=9, heads=12,
                           mlp_ratio=2.0, dropout=0.0, drop_path=0.1, positional="learned"),
    # A CIFAR-sized ViT small enough to train for tens of epochs on a laptop CPU (about 0.8M parameters).
    "vit_cifar_small": ViTConfig(image_size=32, in_channels=3, patch_size=4, dim=128, depth=6, heads=4,
                                 mlp_ratio=2.0, drop_path=0.05, positional="learned"),
}


def preset_config(name: str, **overrides: Any) -> ViTConfig:
    """The config of preset ``name`` with some fields replaced (e.g. ``num_classes=100``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; ViT presets: {', '.join(sorted(PRESETS))}; "
                         "CNN baselines: resnet18, vgg11, simple_cnn")
    return dataclasses.replace(PRESETS[name], **overrides)


class ViT(nn.Module):
    """Vision Transformer classifier. Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits."""

    def __init__(self, config: ViTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or ViTConfig(), **overrides)
        self.config = config
        self.patch_embed = PatchEmbedding(config.image_size, config.patch_size, config.in_channels, config.dim)
        self.cls_token = ClassToken(config.dim)
        self.pos_embed = make_positional_encoding(config.positional, config.num_tokens, config.dim)
        # Stochastic depth grows linearly with depth, as in DeiT.
        drop_paths = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            EncoderBlock(config.dim, config.heads, config.mlp_ratio, config.dropout, config.attn_dropout,
                         drop_path=dp, qkv_bias=config.qkv_bias)
            for dp in drop_paths
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Truncated normal for linear layers (as in timm/DeiT); LayerNorm starts as identity.
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def tokens(self, images: Tensor) -> Tensor:
        """Embedded input sequence. ``(N, C, H, W) -> (N, P + 1, dim)``."""
        return self.pos_embed(self.cls_token(self.patch_embed(images)))

    def pool(self, tokens: Tensor) -> Tensor:
        """``(N, T, dim) -> (N, dim)``: the class token, or the mean of the patch tokens."""
        return tokens[:, 0] if self.config.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward_features(self, images: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, P + 1, dim)``, after the final LayerNorm."""
        x = self.tokens(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``(N, C, H, W) -> (N, classes)`` logits; with ``return_attention=True`` also the
        attention weights of every block stacked as ``(layers, N, heads, T, T)``.
        """
        if not return_attention:
            return self.head(self.pool(self.forward_features(images)))
        x = self.tokens(images)
        maps = []
        for block in self.blocks:
            x, weights = block(x, return_attention=True)
            maps.append(weights)
        logits = self.head(self.pool(self.norm(x)))
        return logits, torch.stack(maps)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a model by name: a ViT preset (``create_model("vit_cifar", num_classes=100)``) or a CNN
    baseline from :mod:`vitlab.cnn` (``create_model("resnet18", in_channels=3, image_size=32)``)."""
    from .cnn import CNN_ARCHITECTURES, CNNClassifier, CNNConfig

    if name in CNN_ARCHITECTURES:
        return CNNClassifier(CNNConfig(arch=name, **overrides))
    return ViT(preset_config(name, **overrides))
