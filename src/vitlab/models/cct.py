"""Compact Convolutional Transformers (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact
Transformers"): a transformer encoder that gets its tokens from a few convolutions instead of patches, and
reads its answer with attention pooling instead of a class token.

A ViT cuts non-overlapping patches, so everything a CNN knows for free (that neighbouring pixels belong
together, that a pattern means the same wherever it is) must be learned from data. CCT's **convolutional
tokenizer** puts that bias back in front of the transformer: ``conv_layers`` blocks of (3x3 convolution,
ReLU, 3x3 max-pool with stride 2), each halving the resolution, their output pixels the tokens::

    images (N, C, 32, 32)
      -> [conv 3x3, ReLU, max-pool 3/2] x conv_layers      (N, dim, 32/2^L, 32/2^L)
      -> flatten                                           (N, T, dim)        T = (32/2^L)^2
      -> + positions, depth x EncoderBlock, LayerNorm      (N, T, dim)
      -> sequence pooling: softmax(w . x_t) over t, sum    (N, dim)           no class token
      -> linear head                                       (N, classes)

**Sequence pooling** weights every output token by a learned score (a linear layer, softmax over the
tokens) and sums them: an attention-weighted mean, which the paper finds better than a class token for
small models. The encoder block is the reference code's (github.com/SHI-Labs/Compact-Transformers), which
differs from a ViT's pre-norm block in one place: after the attention's residual the stream itself is
normalized, ``x = LN1(x + attn(LN0(x)))``, then ``x = x + MLP(x)``; its attention has no query-key-value
bias, and its learned position table starts from a normal of std 0.2.

Names follow the paper: CCT-L/KxC has L encoder layers and C convolutions of kernel K. Its CIFAR-10 results
(Table 1, 300 epochs with AutoAugment, Mixup and CutMix; 5,000 epochs for the best): CCT-2/3x2 89.75 %,
CCT-4/3x2 91.97 %, CCT-6/3x2 93.56 %, CCT-7/3x1 94.72 % (96.53 % after 5,000 epochs).

This family is its own (``family = "cct"``), not a ViT: lesson 10 compares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.configs import Config, ConfigError
from ..layers.attention import MultiHeadSelfAttention, check_heads
from ..layers.encoder import MLP, DropPath, init_transformer_weights
from ..layers.patches import check_image_batch
from ..layers.positional import PositionalKind, sinusoidal_positions
from .registry import register_model

__all__ = ["CCTConfig", "CCT", "CCTBlock", "ConvTokenizer", "SequencePooling", "PUBLISHED_ACCURACY"]

#: Hassani et al. 2021, Table 1: CIFAR-10 test accuracy (%) after 300 epochs.
PUBLISHED_ACCURACY: dict[str, float] = {"cct_2_3x2": 89.75, "cct_4_3x2": 91.97, "cct_6_3x2": 93.56, "cct_7_3x1": 94.72}


@dataclass
class CCTConfig(Config):
    """A CCT: the tokenizer (``conv_layers`` convolutions of ``conv_kernel``, the inner ones ``conv_channels``
    wide, the last one ``dim``), then a ViT encoder of ``depth`` blocks and sequence pooling."""

    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    dim: int = 128
    depth: int = 2
    heads: int = 2
    mlp_ratio: float = 1.0
    conv_layers: int = 2
    conv_kernel: int = 3
    conv_channels: int = 64
    positional: PositionalKind = "learned"
    dropout: float = 0.0
    attn_dropout: float = 0.1
    drop_path: float = 0.1
    qkv_bias: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self.dim, self.heads)
        if self.conv_layers < 1 or self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ConfigError(f"CCTConfig needs at least one convolution with an odd kernel, got conv_layers="
                              f"{self.conv_layers}, conv_kernel={self.conv_kernel}")
        if self.image_size % 2 ** self.conv_layers:
            raise ConfigError(f"CCTConfig.image_size {self.image_size} must be divisible by 2^conv_layers "
                              f"({2 ** self.conv_layers}): each convolution's max-pool halves it")

    @property
    def grid(self) -> int:
        """The side of the token grid: the image halved once per convolution."""
        return self.image_size // 2 ** self.conv_layers

    @property
    def num_tokens(self) -> int:
        return self.grid ** 2


class ConvTokenizer(nn.Module):
    """``conv_layers`` x (conv KxK stride 1, ReLU, max-pool 3x3 stride 2), then flattened:
    ``(N, C, H, W) -> (N, H/2^L * W/2^L, dim)``."""

    def __init__(self, in_channels: int, dim: int, conv_layers: int, kernel: int, channels: int) -> None:
        super().__init__()
        widths = [in_channels] + [channels] * (conv_layers - 1) + [dim]
        self.convs = nn.Sequential(*(nn.Sequential(nn.Conv2d(a, b, kernel, 1, kernel // 2, bias=False),
                                                   nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
                                     for a, b in zip(widths[:-1], widths[1:])))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, images: Tensor) -> Tensor:
        return self.convs(images).flatten(2).transpose(1, 2)


class SequencePooling(nn.Module):
    """An attention-weighted mean of the tokens: ``softmax_t(x_t . w + b)`` weights, summed.
    ``(N, T, dim) -> (N, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def weights(self, tokens: Tensor) -> Tensor:
        """Each token's share of the pooled vector. ``(N, T, dim) -> (N, T)``."""
        return F.softmax(self.score(tokens).squeeze(-1).float(), dim=-1).to(tokens.dtype)

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.einsum("nt,ntd->nd", self.weights(tokens), tokens)


class CCTBlock(nn.Module):
    """The reference CCT encoder layer: ``x = LN1(x + attn(LN0(x)))``, then ``x = x + MLP(x)`` (GELU), with
    stochastic depth on both branches. ``(N, T, dim) -> (N, T, dim)``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, attn_dropout: float,
                 drop_path: float, qkv_bias: bool, norm_eps: float) -> None:
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(dim, heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout,
                                           proj_dropout=dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.drop_path(self.attn(self.norm0(x))))
        return x + self.drop_path(self.mlp(x))


class CCT(nn.Module):
    """Compact Convolutional Transformer. Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits."""

    family = "cct"
    config_class = CCTConfig
    has_attention_maps = False  # no class token: attention rollout has no row to read
    is_transformer = True
    prefers_channels_last = True  # oneDNN convolutions run faster on NHWC batches (vitlab.core.layout)
    num_prefix_tokens = 0       # every token is an image region (Grad-CAM reshapes them all to the grid)

    def __init__(self, config: CCTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = config or CCTConfig(**overrides)
        self.config = config
        self.tokenizer = ConvTokenizer(config.in_channels, config.dim, config.conv_layers, config.conv_kernel,
                                       config.conv_channels)
        self.pos_embed: nn.Parameter | None = None
        if config.positional == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, config.dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.2)
        elif config.positional == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_positions(config.num_tokens, config.dim)[None])
        self.dropout = nn.Dropout(config.dropout)
        drop_paths = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(CCTBlock(config.dim, config.heads, config.mlp_ratio, config.dropout,
                                             config.attn_dropout, p, config.qkv_bias, config.norm_eps)
                                    for p in drop_paths)
        self.norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.pool = SequencePooling(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        for module in (self.blocks, self.norm, self.pool, self.head):
            module.apply(init_transformer_weights)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        """The normalized tokens entering block ``layer``'s attention (as for a ViT; every token is a grid cell)."""
        return self.blocks[layer].norm0

    def get_classifier(self) -> nn.Module:
        return self.head

    @property
    def num_layers(self) -> int:
        """Layer ids for layer-wise learning-rate decay: tokenizer and positions (0), the blocks, the rest."""
        return self.config.depth + 2

    def layer_id(self, parameter_name: str) -> int:
        if parameter_name.startswith(("tokenizer.", "pos_embed")):
            return 0
        if parameter_name.startswith("blocks."):
            return int(parameter_name.split(".")[1]) + 1
        return self.config.depth + 1

    def forward_features(self, images: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, T, dim)``: the encoder's normalized output tokens."""
        check_image_batch(images, self.config.in_channels, (self.config.image_size, self.config.image_size))
        x = self.tokenizer(images)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        elif self.config.positional == "sinusoidal":
            x = x + self.pos_table.to(x.dtype)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.pool(self.forward_features(images)))


#: A CPU-budget recipe: AdamW with the paper's weight decay, label smoothing, crop + flip (lesson 10 and
#: ``make cifar-search`` measure the alternatives).
RECIPE = {"epochs": 30, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.06, "warmup_epochs": 1.0,
          "label_smoothing": 0.1, "augment": "cifar"}
register_model("cct_2_3x2", CCT, CCTConfig(dim=128, depth=2, heads=2, mlp_ratio=1.0, conv_layers=2), recipe=RECIPE,
               description="CCT-2/3x2: conv tokenizer + 2 blocks (dim 128, 0.28M; 89.75 % published)")
register_model("cct_4_3x2", CCT, CCTConfig(dim=128, depth=4, heads=2, mlp_ratio=1.0, conv_layers=2), recipe=RECIPE,
               description="CCT-4/3x2: conv tokenizer + 4 blocks (dim 128, 0.48M; 91.97 % published)")
register_model("cct_6_3x2", CCT, CCTConfig(dim=256, depth=6, heads=4, mlp_ratio=2.0, conv_layers=2), recipe=RECIPE,
               description="CCT-6/3x2: conv tokenizer + 6 blocks (dim 256, 3.3M; 93.56 % published)")

#: ``make train``'s MNIST recipe, found by issue 24's search (the site's findings page, "make train"): the
#: CIFAR-10 recipe's weight decay and label smoothing, a peak rate of 3e-3 (on the AMD EPYC, 1e-3 with dropout
#: gave 99.22 % and 2e-3 99.30-99.35 % in 10 minutes) and the digit augmentation (small shifts, rotations and
#: scales, no flips).
MNIST_RECIPE = {"epochs": 20, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.06, "warmup_epochs": 1.0,
                "label_smoothing": 0.1, "augment": "digits"}
# CCT-2/3x2 for 28x28 digits: a 32-channel inner convolution (16 channels with width 64 gave 99.03 %) and no
# attention dropout or stochastic depth, which slow the learning of a run of 6-20 epochs.
register_model("cct_mnist", CCT, CCTConfig(image_size=28, in_channels=1, dim=128, depth=2, heads=2, mlp_ratio=1.0,
                                           conv_layers=2, conv_channels=32, attn_dropout=0.0, drop_path=0.0),
               recipe=MNIST_RECIPE, description="make train's MNIST model: CCT-2/3x2, 32-channel tokenizer (0.24M)")
