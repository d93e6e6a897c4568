"""The Swin Transformer (Liu et al. 2021): attention inside local windows, shifted windows, a pyramid.

A ViT attends globally: every one of its ``P`` tokens looks at every other, so attention costs
``O(P^2)``. Swin cuts the token grid into non-overlapping ``M x M`` windows and attends only inside
each window, which costs ``O(P * M^2)``: linear in the number of tokens. Two ideas make up for the
lost global view:

* **shifted windows**: every second block shifts the grid by ``M // 2`` (a cyclic ``torch.roll``)
  before cutting it into windows, so the new windows straddle the old windows' borders and
  information crosses them. After the roll, tokens from opposite edges of the image end up in one
  window; a mask stops them from attending to each other (:func:`shifted_window_mask`);
* **patch merging**: between stages, each ``2 x 2`` group of neighbouring tokens is concatenated
  and projected from ``4C`` to ``2C`` channels, halving the resolution and doubling the width like a
  CNN's stages. The last stage's tokens are averaged for the classifier (no class token).

Positions enter as a learned **relative position bias** inside each window: a table of
``(2M - 1)^2 x heads`` entries (one per possible offset between two tokens) added to the attention
scores, indexed by :func:`relative_position_index`.

Pipeline for a batch of ``N`` images ``(N, C, H, W)``, patch size ``p``, width ``D``::

    patch embedding               (N, H/p, W/p, D)        tokens kept as a grid (channels last)
    stage 1: blocks               (N, H/p, W/p, D)        window attention, shifted in every 2nd block
    stage 2: merge, blocks        (N, H/2p, W/2p, 2D)
    stage 3: merge, blocks        (N, H/4p, W/4p, 4D)
    LayerNorm, average, Linear    (N, classes)

The names of the weights follow timm's ``SwinTransformer`` closely; :func:`vitlab.pretrained.from_timm`
converts a timm Swin into this class, and a test checks that both compute the same logits.

Differences from timm, on purpose: every stage's resolution must be divisible by the window (or be
no larger than it, when the window shrinks to the resolution and the shift is dropped, as in timm);
timm pads instead, and the padded zeros then take part in attention. Absolute position embeddings
(``ape``) are not implemented (the Swin paper's default is without).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..core.configs import Config, ConfigError
from ..layers.attention import attend, check_heads
from ..layers.encoder import MLP, DropPath, init_transformer_weights
from ..layers.patches import PatchEmbedding, check_patch_size
from .registry import register_model
from .vit import zero_head

__all__ = ["SwinConfig", "Swin", "window_partition", "window_reverse", "relative_position_index",
           "window_region_ids", "shifted_window_mask", "WindowAttention", "SwinBlock", "PatchMerging", "SwinStage",
           "SWIN_PRESETS"]


@dataclass
class SwinConfig(Config):
    """Everything needed to rebuild a :class:`Swin`; saved as ``config.json`` beside the weights.

    Stage ``i`` has width ``embed_dim * 2**i``, ``depths[i]`` blocks and ``heads[i]`` heads; it works
    on a ``(image_size / patch_size) / 2**i`` square grid, which must be a multiple of ``window_size``
    or no larger than it (the window then shrinks to the whole grid and that stage does not shift).
    """

    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 10
    patch_size: int = 2
    window_size: int = 4
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2, 2)
    heads: tuple[int, ...] = (3, 6, 12)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        self.depths, self.heads = tuple(self.depths), tuple(self.heads)  # config.json stores lists
        check_patch_size(self.image_size, self.patch_size)
        if not self.depths or len(self.depths) != len(self.heads) or min(self.depths) < 1:
            raise ConfigError(f"SwinConfig needs one depth >= 1 and one head count per stage, got depths "
                              f"{self.depths} and heads {self.heads}")
        if self.window_size < 1 or self.num_classes < 0 or not self.norm_eps > 0:
            raise ConfigError("SwinConfig: window_size must be >= 1, num_classes >= 0 and norm_eps > 0")
        for stage, heads in enumerate(self.heads):
            check_heads(self.embed_dim * 2 ** stage, heads)
        for stage, resolution in enumerate(self.stage_resolutions):
            if stage + 1 < len(self.depths) and resolution % 2:
                raise ConfigError(f"stage {stage + 1} works on a {resolution}x{resolution} grid, which patch "
                                  "merging cannot halve: choose image_size, patch_size and the number of stages "
                                  "so that every stage but the last has an even grid")
            if resolution > self.window_size and resolution % self.window_size:
                raise ConfigError(f"stage {stage + 1} works on a {resolution}x{resolution} grid, which "
                                  f"{self.window_size}x{self.window_size} windows do not tile; choose a window "
                                  f"size dividing {resolution}")

    @property
    def input_resolution(self) -> int:
        """The side of the images the model takes (a Swin is not resized: always ``image_size``)."""
        return self.image_size

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_resolutions(self) -> list[int]:
        """The side of the token grid in each stage, e.g. ``[16, 8, 4]`` for 32 px and patch 2."""
        grid = self.image_size // self.patch_size
        return [grid // 2 ** i for i in range(self.num_stages)]

    @property
    def stage_dims(self) -> list[int]:
        """The width of each stage, e.g. ``[48, 96, 192]``."""
        return [self.embed_dim * 2 ** i for i in range(self.num_stages)]

    @property
    def num_features(self) -> int:
        """Width of the pooled features the head reads."""
        return self.stage_dims[-1]


# ---------------------------------------------------------------------------------------------- windows
def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a grid of tokens into non-overlapping windows, each flattened row by row.

    Shapes: ``(N, H, W, C) -> (N * H/M * W/M, M*M, C)``; the windows of image 0 come first, each
    image's windows in row-major order.
    """
    n, h, w, c = x.shape
    m = window_size
    if h % m or w % m:
        raise ValueError(f"a {h}x{w} grid cannot be cut into {m}x{m} windows")
    x = x.view(n, h // m, m, w // m, m, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, m * m, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Put windows back into the grid; the inverse of :func:`window_partition`.

    Shapes: ``(N * H/M * W/M, M*M, C) -> (N, H, W, C)``.
    """
    m, c = window_size, windows.shape[-1]
    x = windows.view(-1, height // m, width // m, m, m, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window_size: int) -> Tensor:
    """For each pair of tokens in an ``M x M`` window, the row of the bias table for their offset.

    Token ``i`` at ``(y_i, x_i)`` and token ``j`` at ``(y_j, x_j)`` are ``(dy, dx) = (y_i - y_j, x_i - x_j)``
    apart, with ``dy, dx`` in ``[-(M-1), M-1]``: ``(2M-1)^2`` possible offsets. Shifting both by ``M-1``
    and reading ``(dy, dx)`` as digits in base ``2M - 1`` numbers them ``0 .. (2M-1)^2 - 1``.
    Shapes: ``-> (M*M, M*M)`` long.
    """
    m = window_size
    ys, xs = torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])                 # (2, M*M)
    offsets = coords[:, :, None] - coords[:, None, :]                  # (2, M*M, M*M): (dy, dx) of i minus j
    return (offsets[0] + m - 1) * (2 * m - 1) + (offsets[1] + m - 1)


def window_region_ids(height: int, width: int, window_size: int, shift: int) -> Tensor:
    """Label the regions of the cyclically shifted grid that were neighbours in the original image.

    After rolling the grid up and left by ``shift``, the last ``shift`` rows (and columns) hold tokens
    that came from the other edge of the image. Splitting rows into ``[0, H-M)``, ``[H-M, H-shift)``,
    ``[H-shift, H)`` (and columns likewise) gives up to 9 regions; two tokens in one window may attend
    to each other only if they carry the same label. Shapes: ``-> (H, W)`` long.
    """
    def bands(size: int) -> Tensor:
        labels = torch.zeros(size, dtype=torch.long)
        labels[size - window_size:] = 1
        labels[size - shift:] = 2
        return labels

    return bands(height)[:, None] * 3 + bands(width)[None, :]


def shifted_window_mask(height: int, width: int, window_size: int, shift: int) -> Tensor:
    """Which token may attend to which inside each window of the shifted grid.

    Shapes: ``-> (num_windows, M*M, M*M)`` bool, ``True`` where attention is allowed (same region,
    see :func:`window_region_ids`). Every token may attend to itself, so no row is all ``False``.
    """
    regions = window_region_ids(height, width, window_size, shift)
    windows = window_partition(regions.view(1, height, width, 1), window_size).squeeze(-1)  # (nW, M*M)
    return windows[:, :, None] == windows[:, None, :]


# -------------------------------------------------------------------------------------------- attention
class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    Shapes: ``(N * nW, M*M, C) -> (N * nW, M*M, C)``; ``mask`` ``(nW, M*M, M*M)`` bool (``True``:
    allowed) or ``None``. With ``return_attention=True`` also the weights ``(N * nW, heads, M*M, M*M)``.
    """

    def __init__(self, dim: int, heads: int, window_size: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_dropout = nn.Dropout(proj_dropout)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived from window_size, so not saved (persistent=False), as in timm.
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def relative_position_bias(self) -> Tensor:
        """The bias added to the attention scores: ``-> (heads, M*M, M*M)``."""
        tokens = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]   # (M^4, heads)
        return bias.view(tokens, tokens, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        windows, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(windows, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias()                                   # (heads, T, T)
        if mask is not None:
            # (nW, heads, T, T); the windows of one image repeat every nW rows of the batch, so the
            # batch is viewed as (N, nW) and the mask broadcasts over N without being copied.
            bias = bias.masked_fill(~mask[:, None], float("-inf"))
            q, k, v = (t.view(-1, len(mask), *t.shape[1:]) for t in (q, k, v))
        out, weights = attend(q, k, v, bias, dropout=self.attn_dropout if self.training else 0.0,
                              return_weights=return_attention)
        out = out.reshape(windows, self.heads, tokens, -1).transpose(1, 2).reshape(windows, tokens, dim)
        out = self.proj_dropout(self.proj(out))
        if return_attention:
            return out, weights.reshape(windows, self.heads, tokens, tokens)  # type: ignore[union-attr]
        return out


class SwinBlock(nn.Module):
    """A pre-norm transformer block whose attention is window attention, optionally shifted.

    Shapes: ``(N, H, W, C) -> (N, H, W, C)``. When the grid is no larger than the window, the window
    shrinks to the whole grid and the shift is dropped (shifting one window changes nothing but adds
    a mask), as in the Swin paper and timm.
    """

    def __init__(self, dim: int, heads: int, resolution: int, window_size: int, shift: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        if resolution <= window_size:
            window_size, shift = resolution, 0
        if not 0 <= shift < window_size:
            raise ValueError(f"the shift must be in [0, window size {window_size}), got {shift}")
        self.resolution, self.window_size, self.shift = resolution, window_size, shift
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = WindowAttention(dim, heads, window_size, qkv_bias, attn_dropout, dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)
        mask = shifted_window_mask(resolution, resolution, window_size, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def window_attention(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Roll, cut into windows, attend, put back, roll back. ``(N, H, W, C) -> (N, H, W, C)``."""
        n, h, w, c = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        out = self.attn(window_partition(x, self.window_size), self.attn_mask, return_attention)
        out, weights = out if return_attention else (out, None)
        x = window_reverse(out, self.window_size, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return (x, weights) if return_attention else x

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(f"this block works on a {self.resolution}x{self.resolution} grid, got {tuple(x.shape)}")
        attended = self.window_attention(self.norm1(x), return_attention)
        attended, weights = attended if return_attention else (attended, None)
        x = x + self.drop_path(attended)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class PatchMerging(nn.Module):
    """Concatenate each 2x2 group of neighbouring tokens, normalize, project ``4C -> 2C``.

    Shapes: ``(N, H, W, C) -> (N, H/2, W/2, 2C)``. The four neighbours are concatenated in the Swin
    paper's order (top-left, bottom-left, top-right, bottom-right), so weights from timm fit.
    """

    def __init__(self, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"patch merging needs an even grid, got {tuple(x.shape[1:3])}")
        neighbours = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(neighbours, dim=-1)))


class SwinStage(nn.Module):
    """Optional patch merging, then ``depth`` blocks alternating plain and shifted windows.

    Shapes: ``(N, H, W, C_in) -> (N, H', W', C)`` with ``H' = H/2, C = 2 C_in`` after a merge.
    """

    def __init__(self, dim: int, depth: int, heads: int, resolution: int, window_size: int, merge: bool,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_paths: list[float] | None = None, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.merge: nn.Module = PatchMerging(dim // 2, norm_eps) if merge else nn.Identity()
        drop_paths = drop_paths or [0.0] * depth
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, resolution, window_size, shift=0 if i % 2 == 0 else window_size // 2,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, dropout=dropout, attn_dropout=attn_dropout,
                      drop_path=drop_paths[i], norm_eps=norm_eps)
            for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        x = self.merge(x)
        for block in self.blocks:
            x = block(x)
        return x


# ------------------------------------------------------------------------------------------------ model
class Swin(nn.Module):
    """Swin Transformer classifier. Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits."""

    family = "swin"
    config_class = SwinConfig
    has_attention_maps = False  # window attention has no class token to roll out (Grad-CAM works)
    is_transformer = True
    num_prefix_tokens = 0

    def __init__(self, config: SwinConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or SwinConfig(), **overrides)
        self.config = config
        self.patch_embed = PatchEmbedding(config.image_size, config.patch_size, config.in_channels,
                                          config.embed_dim)
        self.patch_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        # Stochastic depth grows linearly over all blocks of all stages, as in the Swin paper.
        total = sum(config.depths)
        rates = [config.drop_path * i / max(total - 1, 1) for i in range(total)]
        self.stages = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(config.depths, config.heads)):
            first = sum(config.depths[:i])
            self.stages.append(SwinStage(
                config.stage_dims[i], depth, heads, config.stage_resolutions[i], config.window_size, merge=i > 0,
                mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, dropout=config.dropout,
                attn_dropout=config.attn_dropout, drop_paths=rates[first:first + depth], norm_eps=config.norm_eps))
        self.norm = nn.LayerNorm(config.num_features, eps=config.norm_eps)
        self.feature_map = nn.Identity()  # (N, C, h, w): Grad-CAM's hook point, like a CNN's last stage
        self.head: nn.Module = nn.Linear(config.num_features, config.num_classes) if config.num_classes else \
            nn.Identity()
        self.apply(init_transformer_weights)  # as in the Swin paper's code and timm

    def no_weight_decay(self) -> set[str]:
        """The relative position bias tables (timm's convention), besides biases and norms."""
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        """Grad-CAM's layer: the last stage's normalized feature map ``(N, C, h, w)`` (``layer`` is for
        ViTs and ignored here)."""
        return self.feature_map

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm's name)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new zero-initialized head for ``num_classes`` classes (0: features out)."""
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.head = zero_head(self.config.num_features, num_classes, next(self.parameters()).device)

    @property
    def num_layers(self) -> int:
        """Layer ids for layer-wise learning-rate decay: the embedding (0), each block of every stage
        (1..sum(depths)), the final norm and head (sum(depths) + 1)."""
        return sum(self.config.depths) + 2

    def layer_id(self, parameter_name: str) -> int:
        """Which layer a parameter belongs to (for ``--layer-decay``): patch merging goes with the first
        block of its stage, as in the Swin fine-tuning code."""
        if parameter_name.startswith(("patch_embed.", "patch_norm.")):
            return 0
        if parameter_name.startswith("stages."):
            parts = parameter_name.split(".")
            first = sum(self.config.depths[:int(parts[1])])            # blocks before this stage
            return first + (int(parts[3]) if parts[2] == "blocks" else 0) + 1
        return sum(self.config.depths) + 1

    def embed(self, images: Tensor) -> Tensor:
        """Patch partition and linear embedding. ``(N, C, H, W) -> (N, H/p, W/p, D)``; the embedding
        checks the batch (dtype, channels, size)."""
        side = self.config.stage_resolutions[0]
        tokens = self.patch_embed(images)                                     # (N, P, D), row-major
        return self.patch_norm(tokens.view(len(images), side, side, -1))

    def stage_outputs(self, images: Tensor) -> list[Tensor]:
        """Each stage's output, for the pyramid: ``(N, C, H, W) -> [(N, h_i, w_i, C_i)]``."""
        x, outputs = self.embed(images), []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, images: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C_last, h, w)``: the last stage, normalized, channels first."""
        return self.feature_map(self.norm(self.stage_outputs(images)[-1]).permute(0, 3, 1, 2))

    def forward_head(self, features: Tensor) -> Tensor:
        """``(N, C, h, w) -> (N, classes)`` logits: global average, then the head."""
        return self.head(features.mean(dim=(2, 3)))

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images))


#: The presets: small inputs need small patches and windows (the paper's ImageNet Swin-T has patch 4,
#: window 7, width 96, depths (2, 2, 6, 2) on 224 px).
SWIN_PRESETS: dict[str, SwinConfig] = {
    # 28 px digits: 2x2 patches -> 14x14 tokens in 7x7 windows (4 windows, shift 3), then one 7x7
    # window (global attention, no shift). About 0.3M parameters.
    "swin_mnist": SwinConfig(image_size=28, in_channels=1, patch_size=2, window_size=7, embed_dim=48,
                             depths=(2, 2), heads=(3, 6), drop_path=0.1),
    # 32 px CIFAR: 2x2 patches -> 16x16 tokens, 4x4 windows; 16 -> 8 -> 4 (one window, no shift).
    # The timm reference config; about 1.2M parameters.
    "swin_cifar": SwinConfig(image_size=32, in_channels=3, patch_size=2, window_size=4, embed_dim=48,
                             depths=(2, 2, 2), heads=(3, 6, 12), drop_path=0.1),
}

register_model("swin_mnist", Swin, SWIN_PRESETS["swin_mnist"],
               description="Swin for 28 px digits (patch 2, window 7, 2 stages)",
               recipe={"epochs": 20, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
                       "augment": "digits"})
register_model("swin_cifar", Swin, SWIN_PRESETS["swin_cifar"],
               description="Swin for 32 px CIFAR (patch 2, window 4, 3 stages)",
               recipe={"epochs": 30, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0,
                       "label_smoothing": 0.1, "augment": "cifar-strong"})
