"""The full Vision Transformer (Dosovitskiy et al. 2021), its config and named presets.

Pipeline, with shapes for a batch of ``N`` images of ``C x H x W`` and patch size ``p``::

    images (N, C, H, W)
      -> PatchEmbedding          (N, P, dim)        P = H/p * W/p
      -> ClassToken              (N, P + 1, dim)
      -> positional encoding     (N, P + 1, dim)
      -> depth x EncoderBlock    (N, P + 1, dim)
      -> LayerNorm, pool         (N, dim)           class token (or mean of patch tokens)
      [-> Linear + tanh          (N, rep)           "pre-logits", only with representation_size]
      -> Linear head             (N, classes)       logits (no softmax: CrossEntropyLoss wants logits)

The config also describes the published checkpoints (:mod:`vitlab.pretrained` converts timm's,
torchvision's and Hugging Face's ViTs into this class): LayerNorm epsilon (``norm_eps``: 1e-6 in
timm and torchvision, 1e-12 in Hugging Face), a pre-logits layer, a feature-only model
(``num_classes=0``), and ``input_size`` for a model fine-tuned on images of another size than the
one it was pretrained at (the inputs are resized to ``image_size`` first).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.configs import Config, ConfigError
from ..layers.attention import check_heads
from ..layers.encoder import EncoderBlock, init_transformer_weights
from ..layers.patches import PatchEmbedding, check_image_batch, check_patch_size
from ..layers.positional import PositionalKind, make_positional_encoding, resample_position_table
from ..layers.tokens import ClassToken
from .measure import count_parameters
from .registry import create_model, register_model

__all__ = ["ViTConfig", "ViT", "PRESETS", "create_model", "count_parameters"]


@dataclass
class ViTConfig(Config):
    """Everything needed to rebuild a :class:`ViT`; saved as ``config.json`` beside the weights.

    ``num_classes=0`` builds a feature extractor (the head is the identity, as in timm).
    ``representation_size`` adds the original ViT's "pre-logits" layer (linear + tanh) before the
    head (torchvision's ``representation_size``, Hugging Face's ``ViTModel`` pooler).
    ``input_size``: the side of the images the model is given, when it differs from ``image_size``
    (the resolution its patch grid and position table were built for); inputs are then resized to
    ``image_size`` (bilinear, antialiased) before they are cut into patches.
    """

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
    norm_eps: float = 1e-5
    representation_size: int | None = None
    input_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # positional and pool: checked against their Literal types
        check_patch_size(self.image_size, self.patch_size)
        check_heads(self.dim, self.heads)
        if self.num_classes < 0:
            raise ConfigError(f"ViTConfig.num_classes must be >= 0 (0: no head, features out), got {self.num_classes}")
        if not self.norm_eps > 0:
            raise ConfigError(f"ViTConfig.norm_eps must be positive, got {self.norm_eps}")
        if self.representation_size is not None and self.representation_size <= 0:
            raise ConfigError(f"ViTConfig.representation_size must be positive or None, got {self.representation_size}")
        if self.input_size is not None and self.input_size <= 0:
            raise ConfigError(f"ViTConfig.input_size must be positive or None, got {self.input_size}")

    @property
    def input_resolution(self) -> int:
        """The side of the images the model takes (``input_size``, else ``image_size``)."""
        return self.input_size or self.image_size

    @property
    def num_features(self) -> int:
        """Width of the vector the head reads: ``representation_size`` if set, else ``dim``."""
        return self.representation_size or self.dim

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1


#: Named configurations. ``vit_seed`` is the original walkthrough's tiny model.
PRESETS: dict[str, ViTConfig] = {
    # The walkthrough: 28x28 digits, 4x4 patches -> 7x7 = 49 tokens, hidden size 8, 2 blocks, 2 heads.
    "vit_seed": ViTConfig(image_size=28, in_channels=1, patch_size=4, dim=8, depth=2, heads=2,
                          mlp_ratio=4.0, positional="sinusoidal"),
    # The course's MNIST ViT, the lessons' shipped weights/vit_mnist (about 0.2M parameters). 7x7 patches give
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


class ViT(nn.Module):
    """Vision Transformer classifier. Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits."""

    family = "vit"
    config_class = ViTConfig
    has_attention_maps = True
    num_prefix_tokens = 1  # tokens before the patches (the class token); DeiT adds a distillation token

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
                         drop_path=dp, qkv_bias=config.qkv_bias, norm_eps=config.norm_eps)
            for dp in drop_paths
        )
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.pre_logits: nn.Module = nn.Identity()
        if config.representation_size is not None:
            self.pre_logits = nn.Sequential(nn.Linear(config.dim, config.representation_size), nn.Tanh())
        self.head: nn.Module = nn.Linear(config.num_features, config.num_classes) if config.num_classes else \
            nn.Identity()
        self.apply(self._init_weights)

    _init_weights = staticmethod(init_transformer_weights)  # truncated normal linear layers, as in timm/DeiT

    def no_weight_decay(self) -> set[str]:
        """Parameters kept out of weight decay besides biases and norms (timm's convention):
        the class token and the learned position table pull towards no particular value."""
        return {name for name, _ in self.named_parameters() if name.startswith(("cls_token.", "pos_embed."))}

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        """Grad-CAM's default layer: ``blocks[layer].norm1``, the normalized tokens entering that block.
        (The output of the *last* block is useless: the head reads only the class token there, so the
        patch tokens get zero gradient.)"""
        return self.blocks[layer].norm1

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm's name): what a linear probe trains and a new task replaces."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for ``num_classes`` classes (0: none), zero-initialized as in the ViT paper's
        fine-tuning ("we remove the pre-trained prediction head and attach a zero-initialized D x K
        feedforward layer"), reading the class token directly: a pre-logits layer is removed too (the
        paper fine-tunes with a single linear layer). The config is updated to match."""
        self.config = dataclasses.replace(self.config, num_classes=num_classes, representation_size=None)
        self.pre_logits = nn.Identity()
        self.head = zero_head(self.config.num_features, num_classes, next(self.parameters()).device)

    @property
    def num_layers(self) -> int:
        """Layer ids for layer-wise learning-rate decay: the embedding (0), each block (1..depth), the
        final norm and head (depth + 1)."""
        return self.config.depth + 2

    def layer_id(self, parameter_name: str) -> int:
        """Which layer a parameter belongs to, for layer-wise learning-rate decay (BEiT, MAE): 0 for
        the patch embedding, class token and position table, ``i + 1`` for ``blocks.i``, and
        ``depth + 1`` for everything after the blocks."""
        if parameter_name.startswith(("patch_embed.", "cls_token.", "pos_embed.")):
            return 0
        if parameter_name.startswith("blocks."):
            return int(parameter_name.split(".")[1]) + 1
        return self.config.depth + 1

    def prepare_input(self, images: Tensor) -> Tensor:
        """Check the batch and, for a model with ``input_size``, resize it to ``image_size``.
        ``(N, C, s, s) -> (N, C, image_size, image_size)``."""
        size = self.config.input_resolution
        check_image_batch(images, self.config.in_channels, (size, size))
        if size == self.config.image_size:
            return images
        return F.interpolate(images, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False,
                             antialias=True)

    def tokens(self, images: Tensor, any_size: bool = False) -> Tensor:
        """Embedded input sequence: patches, the prefix tokens, positions. ``(N, C, H, W) -> (N, P + prefix, dim)``.

        ``any_size=True`` also takes square images of another side that is a multiple of the patch size
        (DINO's small local crops): the position table is resampled (bicubic) to their patch grid, as the
        reference code's ``interpolate_pos_encoding`` does. Without it an image of another size is an error:
        a silent resampling would hide a wrong input."""
        side = self.config.image_size
        if not any_size or tuple(images.shape[-2:]) == (side, side):
            return self.pos_embed(self.prefix_tokens(self.patch_embed(self.prepare_input(images))))
        height, width = images.shape[-2:]
        if self.config.input_size is not None:
            raise ValueError("any_size is for a model run at its own resolution; this one resizes its "
                             f"{self.config.input_size}x{self.config.input_size} inputs to {side}x{side}")
        if height != width or height % self.config.patch_size:
            raise ValueError(f"images of another size must be square with a side that is a multiple of the patch "
                             f"size {self.config.patch_size}, got {height}x{width}")
        tokens = self.prefix_tokens(self.patch_embed(images, any_size=True))
        table = getattr(self.pos_embed, "table", None)
        if table is None:  # positional="none": nothing to resample
            return tokens
        grid = height // self.config.patch_size
        return tokens + resample_position_table(table, grid, self.num_prefix_tokens).to(tokens.dtype)

    def prefix_tokens(self, patches: Tensor) -> Tensor:
        """The tokens before the patches: the class token. ``(N, P, dim) -> (N, P + 1, dim)``."""
        return self.cls_token(patches)

    def pool(self, tokens: Tensor) -> Tensor:
        """``(N, T, dim) -> (N, dim)``: the class token, or the mean of the patch tokens."""
        return tokens[:, 0] if self.config.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward_features(self, images: Tensor, any_size: bool = False) -> Tensor:
        """``(N, C, H, W) -> (N, P + 1, dim)``, after the final LayerNorm (``any_size``: see :meth:`tokens`)."""
        x = self.tokens(images, any_size)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``(N, C, H, W) -> (N, classes)`` logits; with ``return_attention=True`` also the
        attention weights of every block stacked as ``(layers, N, heads, T, T)``.
        """
        if not return_attention:
            return self.forward_head(self.forward_features(images))
        x = self.tokens(images)
        maps = []
        for block in self.blocks:
            x, weights = block(x, return_attention=True)
            maps.append(weights)
        logits = self.forward_head(self.norm(x))
        return logits, torch.stack(maps)

    def forward_head(self, features: Tensor) -> Tensor:
        """``(N, T, dim)`` normalized tokens ``-> (N, classes)`` logits (``(N, num_features)`` features
        when ``num_classes=0``): pool, pre-logits, head."""
        return self.head(self.pre_logits(self.pool(features)))

    def keep_patch_tokens(self, tokens: Tensor, keep: Tensor) -> Tensor:
        """Drop patch tokens, keeping the prefix tokens (class, distillation) and the patches ``keep`` names.

        The occlusion of a ViT in Naseer et al. 2021 ("Intriguing Properties of Vision Transformers"): a dropped
        patch is not painted over, it is simply not in the sequence. Shapes: ``tokens (N, prefix + P, dim)`` from
        :meth:`tokens` (positions already added, so every kept token still carries its place), ``keep (N, K)``
        (one set per image) or ``(K,)`` (the same for all) int64 patch indices in ``[0, P)``, row-major as the
        patch grid, ``-> (N, prefix + K, dim)``, the patches in the order ``keep`` gives them.
        """
        prefix = self.num_prefix_tokens
        patches = tokens.shape[1] - prefix
        if keep.dtype not in (torch.int64, torch.int32) or keep.dim() not in (1, 2):
            raise ValueError(f"keep must be (K,) or (N, K) integer patch indices, got {keep.dtype} "
                             f"{tuple(keep.shape)}")
        keep = keep.to(tokens.device).long()
        keep = keep.expand(tokens.shape[0], -1) if keep.dim() == 1 else keep
        if keep.shape[0] != tokens.shape[0]:
            raise ValueError(f"keep has {keep.shape[0]} rows for {tokens.shape[0]} images")
        if keep.numel() and (keep.min() < 0 or keep.max() >= patches):
            raise ValueError(f"keep holds patch indices outside [0, {patches})")
        kept = tokens[:, prefix:].gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return torch.cat([tokens[:, :prefix], kept], dim=1)

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """The encoder and head on an embedded sequence: ``(N, prefix + K, dim) -> (N, classes)`` logits, for any
        number ``K`` of patch tokens (e.g. thinned by :meth:`keep_patch_tokens`). ``forward_tokens(tokens(x))``
        is ``forward(x)``; the pooling reads the class token (or averages the patch tokens that are there)."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.forward_head(self.norm(tokens))


def zero_head(in_features: int, num_classes: int, device: torch.device | str | None = None) -> nn.Module:
    """A zero-initialized linear classifier ``(N, in_features) -> (N, num_classes)`` for fine-tuning
    (the identity when ``num_classes`` is 0: a feature extractor)."""
    if not num_classes:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes, device=device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head



# The presets and their tuned training recipes (vitlab.train.TrainConfig fields).
register_model("vit_seed", ViT, PRESETS["vit_seed"], description="the walkthrough's tiny ViT (28x28, dim 8)",
               # Its step size, and 15 epochs (about 3 minutes on a 2-core CPU) instead of 5: 93.5 % test
               # accuracy vs 81.9 % after 5 epochs (README, "Results").
               recipe={"epochs": 15, "batch_size": 128, "lr": 5e-3, "weight_decay": 0.0, "warmup_epochs": 0.5})
register_model("vit_mnist", ViT, PRESETS["vit_mnist"], description="the lessons' MNIST ViT (7x7 patches, 0.2M)",
               # 98.5 %+ on MNIST within 15 minutes on a 2-core CPU (README: "How the recipe was tuned").
               recipe={"epochs": 20, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
                       "augment": "digits"})
register_model("vit_cifar", ViT, PRESETS["vit_cifar"], description="CIFAR-sized ViT (dim 192, depth 9; GPU recipe)",
               # Small-data ViT recipe for CIFAR-sized inputs (GPU-sized: 200 epochs).
               recipe={"epochs": 200, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 5.0,
                       "label_smoothing": 0.1, "augment": "cifar-strong"})
register_model("vit_cifar_small", ViT, PRESETS["vit_cifar_small"],
               description="CIFAR-sized ViT for CPU budgets (dim 128, 0.8M)",
               # The same recipe, for CPU budgets (usually run with --time-budget).
               recipe={"epochs": 30, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
                       "label_smoothing": 0.1, "augment": "cifar-strong"})
