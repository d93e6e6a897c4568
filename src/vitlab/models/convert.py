"""Pretrained ViTs from timm, torchvision and Hugging Face, as :class:`vitlab.ViT` models.

A published ViT-B/16 and vitlab's ViT compute the same function; only the parameter names and
two layouts differ. Each converter below is a readable table from vitlab's names to the
library's, plus those two layouts:

* **patch embedding**: the libraries cut patches with a ``Conv2d(C, D, kernel=p, stride=p)``
  whose weight is ``(D, C, p, p)``; vitlab flattens each patch in ``(C, p, p)`` order and applies
  an ``nn.Linear(C*p*p, D)`` whose weight is ``(D, C*p*p)``: the same numbers, reshaped.
* **query, key, value**: vitlab (like timm) computes them with one ``Linear(D, 3D)`` whose rows
  are ``[W_q; W_k; W_v]``. torchvision's ``nn.MultiheadAttention`` stores them stacked the same
  way (``in_proj_weight``); Hugging Face keeps three ``Linear(D, D)`` layers, which are stacked.

Conversions (each returns a ``ViT`` in eval mode; tests check equal logits to 1e-5)::

    from_timm(model_or_state_dict)          timm.models.VisionTransformer
    from_torchvision(model_or_state_dict)   torchvision.models.VisionTransformer
    from_hf(model_or_state_dict, config)    transformers ViTModel / ViTForImageClassification
    from_timm(swin_model)                   timm.models.SwinTransformer -> vitlab.swin.Swin

A state dict alone does not say how many attention heads the model has: the published widths are
known (:data:`STANDARD_HEADS`: ViT-Ti/S/B/L/H), any other needs ``heads=``.

Adapting a model to a new task::

    resample_position_table(table, new_grid)   (1, 1 + g*g, D) -> (1, 1 + g'*g', D), bicubic
                                               (vitlab.layers.positional, re-exported here)
    adapt(model, num_classes=..., image_size=..., input_size=...)

Loading by name, with the download and cache of each library's own hub::

    load("timm:vit_base_patch16_224"), load("torchvision:vit_b_16"), load("hf:google/vit-base-patch16-224"),
    load("runs/my-run"), load("weights.safetensors" | "model.pth" | "pytorch_model.bin")

Without a network a hub name raises one :class:`WeightsUnavailableError` that says what could
not be fetched and how to pass a local file instead. Local ``.pth``/``.bin`` files are read with
``torch.load(weights_only=True)``: loading a file cannot run code.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import socket
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..core.configs import ConfigError
from ..core.io import CheckpointError
from ..layers.positional import resample_position_table
from .deit import DeiT, DeiTConfig
from .swin import Swin, SwinConfig
from .vit import ViT, ViTConfig

__all__ = ["TIMM_NAMES", "TIMM_SWIN_NAMES", "TORCHVISION_NAMES", "HF_NAMES", "WeightsUnavailableError", "from_timm",
           "from_torchvision", "from_hf", "from_timm_swin", "from_state_dict", "resample_position_table", "adapt",
           "load", "convert_state_dict", "is_run_folder"]


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights could not be fetched (no network, no cache) or their library is not installed."""


# ---------------------------------------------------------------------------------------------- name tables
# vitlab module -> the library's module. ``{i}`` is a block index. Each row maps the module's ``weight``
# and ``bias`` (or, for a bare parameter such as the class token, the tensor itself). A tuple of
# source names is concatenated along the first dimension (Hugging Face's separate q, k, v).

#: timm ``VisionTransformer``: the same layout as vitlab, nearly the same names.
TIMM_NAMES: dict[str, str | tuple[str, ...]] = {
    "patch_embed.proj": "patch_embed.proj",             # Conv2d (D, C, p, p) -> Linear (D, C*p*p)
    "cls_token.token": "cls_token",
    "pos_embed.table": "pos_embed",
    "blocks.{i}.norm1": "blocks.{i}.norm1",
    "blocks.{i}.attn.qkv": "blocks.{i}.attn.qkv",       # already [q; k; v]
    "blocks.{i}.attn.proj": "blocks.{i}.attn.proj",
    "blocks.{i}.norm2": "blocks.{i}.norm2",
    "blocks.{i}.mlp.fc1": "blocks.{i}.mlp.fc1",
    "blocks.{i}.mlp.fc2": "blocks.{i}.mlp.fc2",
    "norm": "norm",
    "head": "head",
}

#: timm ``VisionTransformerDistilled`` (``deit_*_distilled_*``) -> :class:`vitlab.deit.DeiT`: one more token and head.
TIMM_DEIT_NAMES: dict[str, str | tuple[str, ...]] = {**TIMM_NAMES, "dist_token": "dist_token", "head_dist": "head_dist"}

#: timm ``SwinTransformer`` -> :class:`vitlab.swin.Swin` (``{i}``: stage, ``{j}``: block in the stage).
TIMM_SWIN_NAMES: dict[str, str | tuple[str, ...]] = {
    "patch_embed.proj": "patch_embed.proj",             # Conv2d (D, C, p, p) -> Linear (D, C*p*p)
    "patch_norm": "patch_embed.norm",
    "stages.{i}.merge.norm": "layers.{i}.downsample.norm",
    "stages.{i}.merge.reduction": "layers.{i}.downsample.reduction",
    "stages.{i}.blocks.{j}.norm1": "layers.{i}.blocks.{j}.norm1",
    "stages.{i}.blocks.{j}.attn.relative_position_bias_table":
        "layers.{i}.blocks.{j}.attn.relative_position_bias_table",         # (2M-1)^2 x heads, same layout
    "stages.{i}.blocks.{j}.attn.qkv": "layers.{i}.blocks.{j}.attn.qkv",
    "stages.{i}.blocks.{j}.attn.proj": "layers.{i}.blocks.{j}.attn.proj",
    "stages.{i}.blocks.{j}.norm2": "layers.{i}.blocks.{j}.norm2",
    "stages.{i}.blocks.{j}.mlp.fc1": "layers.{i}.blocks.{j}.mlp.fc1",
    "stages.{i}.blocks.{j}.mlp.fc2": "layers.{i}.blocks.{j}.mlp.fc2",
    "norm": "norm",
    "head": "head.fc",
}

#: torchvision ``VisionTransformer`` (``vit_b_16`` and friends).
TORCHVISION_NAMES: dict[str, str | tuple[str, ...]] = {
    "patch_embed.proj": "conv_proj",                    # Conv2d (D, C, p, p) -> Linear (D, C*p*p)
    "cls_token.token": "class_token",
    "pos_embed.table": "encoder.pos_embedding",
    "blocks.{i}.norm1": "encoder.layers.encoder_layer_{i}.ln_1",
    "blocks.{i}.attn.qkv": "encoder.layers.encoder_layer_{i}.self_attention.in_proj",  # in_proj_weight: [q; k; v]
    "blocks.{i}.attn.proj": "encoder.layers.encoder_layer_{i}.self_attention.out_proj",
    "blocks.{i}.norm2": "encoder.layers.encoder_layer_{i}.ln_2",
    "blocks.{i}.mlp.fc1": "encoder.layers.encoder_layer_{i}.mlp.0",
    "blocks.{i}.mlp.fc2": "encoder.layers.encoder_layer_{i}.mlp.3",
    "norm": "encoder.ln",
    "pre_logits.0": "heads.pre_logits",                 # only with representation_size
    "head": "heads.head",
}

#: Hugging Face ``ViTModel`` (``ViTForImageClassification`` adds the prefix ``vit.`` and ``classifier``).
#: These are transformers 5's names; checkpoints saved by transformers 4 (most of the Hub) are
#: renamed first by :data:`HF_LEGACY_NAMES`.
HF_NAMES: dict[str, str | tuple[str, ...]] = {
    "patch_embed.proj": "embeddings.patch_embeddings.projection",   # Conv2d -> Linear
    "cls_token.token": "embeddings.cls_token",
    "pos_embed.table": "embeddings.position_embeddings",
    "blocks.{i}.norm1": "layers.{i}.layernorm_before",
    "blocks.{i}.attn.qkv": ("layers.{i}.attention.q_proj", "layers.{i}.attention.k_proj",
                            "layers.{i}.attention.v_proj"),          # three Linear(D, D) stacked
    "blocks.{i}.attn.proj": "layers.{i}.attention.o_proj",
    "blocks.{i}.norm2": "layers.{i}.layernorm_after",
    "blocks.{i}.mlp.fc1": "layers.{i}.mlp.fc1",
    "blocks.{i}.mlp.fc2": "layers.{i}.mlp.fc2",
    "norm": "layernorm",
    "pre_logits.0": "pooler.dense",                     # ViTModel's pooler: Linear + tanh on the class token
    "head": "classifier",
}

#: transformers 4 names (regular expression -> transformers 5 name), as saved in most Hub checkpoints.
HF_LEGACY_NAMES: list[tuple[str, str]] = [
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.", r"layers.\1."),
]


def _source_names(table: Mapping[str, str | tuple[str, ...]], target: str) -> tuple[str, ...] | None:
    """The library's tensor name(s) for vitlab's tensor ``target`` (``None``: not in the table)."""
    for vitlab_module, source in table.items():
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(vitlab_module))  # {i}, {j}: indices
        match = re.fullmatch(pattern + r"(?P<suffix>(\.weight|\.bias)?)", target)
        if match is None:
            continue
        suffix = match.group("suffix")
        indices = {key: value for key, value in match.groupdict().items() if key != "suffix"}
        sources = (source,) if isinstance(source, str) else source
        names = []
        for name in sources:
            for key, value in indices.items():
                name = name.replace("{" + key + "}", value)
            if name.endswith("in_proj"):  # nn.MultiheadAttention: in_proj_weight, in_proj_bias
                names.append(f"{name}_{suffix[1:]}")
            else:
                names.append(name + suffix)
        return tuple(names)
    return None


def convert_state_dict(source: Mapping[str, Tensor], table: Mapping[str, str | tuple[str, ...]], model: ViT,
                       library: str, ignore: Sequence[str] = ()) -> dict[str, Tensor]:
    """Rename (and reshape) a library's state dict into ``model``'s.

    Every tensor of ``model`` must be found, and every tensor of ``source`` used (except names
    matching a regular expression in ``ignore``): a leftover tensor means a variant the converter
    does not know (layer scale, registers, ...), which would otherwise be dropped silently.
    """
    converted: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for target, reference in model.state_dict().items():
        names = _source_names(table, target)
        if names is None or any(name not in source for name in names):
            missing.append(f"{target} <- {', '.join(names) if names else '?'}")
            continue
        tensor = torch.cat([source[name] for name in names]) if len(names) > 1 else source[names[0]]
        if tensor.numel() != reference.numel():
            raise CheckpointError(f"{library} tensor {', '.join(names)} has shape {tuple(tensor.shape)}, but vitlab's "
                                  f"{target} needs {tuple(reference.shape)}: the inferred config does not fit")
        converted[target] = tensor.detach().reshape(reference.shape).to(reference.dtype)  # conv -> linear: reshape
        used.update(names)
    if missing:
        raise CheckpointError(f"the {library} weights lack {len(missing)} tensor(s) vitlab's ViT needs, e.g. "
                              f"{missing[:3]}: is this a {library} ViT state dict?")
    leftover = sorted(k for k in set(source) - used if not any(re.fullmatch(p, k) for p in ignore))
    if leftover:
        raise CheckpointError(f"{len(leftover)} {library} tensor(s) have no place in vitlab's ViT, e.g. "
                              f"{leftover[:4]}: this is a variant vitlab does not implement")
    return converted


def _load_converted(model: ViT, state: Mapping[str, Tensor], table: Mapping[str, str | tuple[str, ...]],
                    library: str, ignore: Sequence[str] = ()) -> ViT:
    """``model`` with ``state`` converted into it (one model: its names are the targets, then it is filled)."""
    model.load_state_dict(convert_state_dict(state, table, model, library, ignore))
    return model.eval()


def _depth(keys: Sequence[str], pattern: str) -> int:
    indices = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if not indices:
        raise CheckpointError(f"no transformer blocks found (no tensor named like {pattern!r})")
    return max(indices) + 1


#: Heads of the published ViT widths (Ti, S, B, L: 64-dimensional heads; H and the giant sizes: 16 heads).
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


def _default_heads(dim: int, heads: int | None) -> int:
    """A state dict's tensors do not say how many heads split the width: the standard sizes are known,
    anything else must be given (a wrong guess would be a silently different model)."""
    if heads is not None:
        return heads
    if dim not in STANDARD_HEADS:
        raise CheckpointError(f"cannot tell the number of attention heads of a {dim}-wide ViT from its weights: "
                              f"pass heads=N (known widths: {STANDARD_HEADS})")
    return STANDARD_HEADS[dim]


def _grid_image_size(positions: int, prefix: int, patch_size: int) -> int:
    grid = math.isqrt(positions - prefix)
    if grid * grid != positions - prefix:
        raise CheckpointError(f"{positions - prefix} position entries do not form a square patch grid")
    return grid * patch_size


# --------------------------------------------------------------------------------------------------- timm
def _timm_config(model: nn.Module) -> ViTConfig:
    """Read a timm ``VisionTransformer``'s config, refusing the variants vitlab's ViT does not implement."""
    block = model.blocks[0]
    unsupported = {
        "no class token": not getattr(model, "has_class_token", True),
        "register tokens": getattr(model, "num_reg_tokens", 0) > 0,
        "position embedding without the class token (no_embed_class)": getattr(model, "no_embed_class", False),
        f"global_pool={getattr(model, 'global_pool', 'token')!r} (vitlab pools the class token)":
            getattr(model, "global_pool", "token") != "token",
        "a norm before the blocks (pre_norm, CLIP)": not isinstance(getattr(model, "norm_pre", nn.Identity()),
                                                                    nn.Identity),
        "layer scale (init_values)": not isinstance(getattr(block, "ls1", nn.Identity()), nn.Identity),
        "query/key norm (qk_norm)": not isinstance(getattr(block.attn, "q_norm", nn.Identity()), nn.Identity),
        "an activation other than exact GELU": not (isinstance(block.mlp.act, nn.GELU)
                                                    and block.mlp.act.approximate == "none"),
        "attention pooling": getattr(model, "attn_pool", None) is not None,
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise ValueError(f"this timm model uses {', '.join(found)}, which vitlab's ViT does not implement")
    patch = model.patch_embed.patch_size
    image = model.patch_embed.img_size
    if patch[0] != patch[1] or image[0] != image[1]:
        raise ValueError(f"vitlab's ViT needs square images and patches, got image {image}, patch {patch}")
    dim = model.embed_dim
    return ViTConfig(image_size=image[0], in_channels=model.patch_embed.proj.in_channels, patch_size=patch[0],
                     num_classes=model.num_classes, dim=dim, depth=len(model.blocks), heads=block.attn.num_heads,
                     mlp_ratio=block.mlp.fc1.out_features / dim, qkv_bias=block.attn.qkv.bias is not None,
                     norm_eps=block.norm1.eps, positional="learned", pool="cls")


def _timm_config_from_state(state: Mapping[str, Tensor], heads: int | None, norm_eps: float,
                            distilled: bool = False) -> ViTConfig:
    dim, channels, patch, _ = state["patch_embed.proj.weight"].shape
    prefix = 2 if distilled else 1
    return ViTConfig(image_size=_grid_image_size(state["pos_embed"].shape[1], prefix, patch), in_channels=channels,
                     patch_size=patch, num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
                     dim=dim, depth=_depth(list(state), r"blocks\.(\d+)\."), heads=_default_heads(dim, heads),
                     mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                     qkv_bias="blocks.0.attn.qkv.bias" in state, norm_eps=norm_eps)


def _as_deit(config: ViTConfig) -> ViT:
    return DeiT(DeiTConfig(**dataclasses.asdict(config)))


def _timm_swin_config(model: nn.Module) -> Any:
    """Read a timm ``SwinTransformer``'s config, refusing what :class:`vitlab.swin.Swin` does not implement."""
    blocks = [block for stage in model.layers for block in stage.blocks]
    unsupported = {
        "absolute position embeddings (ape)": getattr(model, "absolute_pos_embed", None) is not None,
        f"global_pool={getattr(model, 'global_pool', 'avg')!r} (vitlab averages the tokens)":
            getattr(model, "global_pool", "avg") != "avg",
        "always_partition / dynamic masks": any(getattr(b, "always_partition", False) or getattr(b, "dynamic_mask",
                                                                                                 False)
                                                for b in blocks),
        "an activation other than exact GELU": not all(isinstance(b.mlp.act, nn.GELU)
                                                       and b.mlp.act.approximate == "none" for b in blocks),
        "blocks without alternating shifts": any(
            any(block.shift_size) != (j % 2 == 1 and block.window_size[0] < stage.blocks[0].input_resolution[0])
            for stage in model.layers for j, block in enumerate(stage.blocks)),
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise ValueError(f"this timm Swin uses {', '.join(found)}, which vitlab's Swin does not implement")
    patch, image = model.patch_embed.patch_size, model.patch_embed.img_size
    if patch[0] != patch[1] or image[0] != image[1]:
        raise ValueError(f"vitlab's Swin needs square images and patches, got image {image}, patch {patch}")
    dim = model.embed_dim
    try:
        return SwinConfig(
            image_size=image[0], in_channels=model.patch_embed.proj.in_channels, num_classes=model.num_classes,
            patch_size=patch[0], window_size=max(b.window_size[0] for b in blocks), embed_dim=dim,
            depths=tuple(len(stage.blocks) for stage in model.layers),
            heads=tuple(stage.blocks[0].attn.num_heads for stage in model.layers),
            mlp_ratio=blocks[0].mlp.fc1.out_features / dim, qkv_bias=blocks[0].attn.qkv.bias is not None,
            norm_eps=model.norm.eps, drop_path=0.0)
    except ConfigError as error:  # e.g. a grid timm pads to the window and vitlab refuses
        raise ValueError(f"this timm Swin's geometry does not fit vitlab's Swin: {error}") from None


def _is_timm_swin(model_or_state_dict: nn.Module | Mapping[str, Tensor]) -> bool:
    if isinstance(model_or_state_dict, nn.Module):
        return type(model_or_state_dict).__name__ == "SwinTransformer"
    return any(k.endswith("relative_position_bias_table") for k in model_or_state_dict)


def from_timm_swin(model: nn.Module) -> nn.Module:
    """A :class:`vitlab.swin.Swin` computing the same function as a timm ``SwinTransformer`` (in eval mode)."""
    if not isinstance(model, nn.Module):
        raise TypeError("a timm Swin is converted from the model itself (its image size is not in its state dict): "
                        "build it with timm.create_model(..., pretrained=False), load the state dict into it, "
                        "then call from_timm(model)")
    return _load_converted(Swin(_timm_swin_config(model)), model.state_dict(), TIMM_SWIN_NAMES, "timm")


def from_timm(model_or_state_dict: nn.Module | Mapping[str, Tensor], *, heads: int | None = None,
              norm_eps: float = 1e-6) -> nn.Module:
    """A vitlab ``ViT`` computing the same function as a timm ``VisionTransformer``.

    Given the model, its config is read from it; given a state dict, it is inferred from the tensor
    shapes (``heads``: see :data:`STANDARD_HEADS`; ``norm_eps``: timm's 1e-6). Variants vitlab does not
    implement (layer scale, registers, average pooling, ...) are refused with a message naming them.
    A distilled DeiT (``VisionTransformerDistilled``, with its distillation token) becomes a
    :class:`vitlab.deit.DeiT`; a ``SwinTransformer`` a :class:`vitlab.swin.Swin` (see :func:`from_timm_swin`).
    """
    if _is_timm_swin(model_or_state_dict):
        return from_timm_swin(model_or_state_dict)  # type: ignore[arg-type]
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
        config = _timm_config(model_or_state_dict)
    else:
        state = dict(model_or_state_dict)
        config = _timm_config_from_state(state, heads, norm_eps, distilled="dist_token" in state)
    if "dist_token" in state:
        return _load_converted(_as_deit(config), state, TIMM_DEIT_NAMES, "timm")
    return _load_converted(ViT(config), state, TIMM_NAMES, "timm")


# -------------------------------------------------------------------------------------------- torchvision
def _torchvision_config(model: nn.Module) -> ViTConfig:
    if not isinstance(getattr(model, "conv_proj", None), nn.Conv2d):
        raise ValueError("this torchvision ViT has a convolutional stem (conv_stem_configs), which vitlab's ViT "
                         "does not implement")
    layer = model.encoder.layers[0]
    return ViTConfig(image_size=model.image_size, in_channels=model.conv_proj.in_channels,
                     patch_size=model.patch_size, num_classes=model.num_classes, dim=model.hidden_dim,
                     depth=len(model.encoder.layers), heads=layer.num_heads, mlp_ratio=model.mlp_dim / model.hidden_dim,
                     qkv_bias=layer.self_attention.in_proj_bias is not None, norm_eps=model.encoder.ln.eps,
                     representation_size=model.representation_size)


def _torchvision_config_from_state(state: Mapping[str, Tensor], heads: int | None, norm_eps: float) -> ViTConfig:
    dim, channels, patch, _ = state["conv_proj.weight"].shape
    pre_logits = state.get("heads.pre_logits.weight")
    return ViTConfig(image_size=_grid_image_size(state["encoder.pos_embedding"].shape[1], 1, patch),
                     in_channels=channels, patch_size=patch, num_classes=state["heads.head.weight"].shape[0],
                     dim=dim, depth=_depth(list(state), r"encoder\.layers\.encoder_layer_(\d+)\."),
                     heads=_default_heads(dim, heads),
                     mlp_ratio=state["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0] / dim,
                     qkv_bias="encoder.layers.encoder_layer_0.self_attention.in_proj_bias" in state,
                     norm_eps=norm_eps, representation_size=None if pre_logits is None else pre_logits.shape[0])


def _torchvision_legacy_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision < 0.13 saved the MLP as ``linear_1``/``linear_2`` (torchvision renames them on load too)."""
    return {re.sub(r"\.mlp\.linear_1\.", ".mlp.0.", re.sub(r"\.mlp\.linear_2\.", ".mlp.3.", k)): v
            for k, v in state.items()}


def from_torchvision(model_or_state_dict: nn.Module | Mapping[str, Tensor], *, heads: int | None = None,
                     norm_eps: float = 1e-6) -> ViT:
    """A vitlab ``ViT`` computing the same function as a torchvision ``VisionTransformer``
    (``vit_b_16``, ``vit_b_32``, ``vit_l_16``, ...; a pre-logits layer becomes ``representation_size``)."""
    if isinstance(model_or_state_dict, nn.Module):
        config = _torchvision_config(model_or_state_dict)
        state = model_or_state_dict.state_dict()
    else:
        state = _torchvision_legacy_names(model_or_state_dict)
        config = _torchvision_config_from_state(state, heads, norm_eps)
    return _load_converted(ViT(config), state, TORCHVISION_NAMES, "torchvision")


# ------------------------------------------------------------------------------------------ Hugging Face
def _hf_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``vit.`` prefix of ``ViTForImageClassification`` and rename transformers 4 names."""
    renamed = {}
    for key, value in state.items():
        key = key[len("vit."):] if key.startswith("vit.") else key
        for pattern, replacement in HF_LEGACY_NAMES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        renamed[key] = value
    return renamed


def _hf_config(hf_config: Mapping[str, Any] | Any, state: Mapping[str, Tensor]) -> ViTConfig:
    """A ``ViTConfig`` from a transformers ``ViTConfig`` (object or ``config.json`` dict) and the weights."""
    get = hf_config.get if isinstance(hf_config, Mapping) else lambda k, d=None: getattr(hf_config, k, d)
    if get("model_type", "vit") != "vit":
        raise ValueError(f"vitlab converts Hugging Face ViT models (model_type 'vit'), not {get('model_type')!r}")
    if get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {get('hidden_act')!r}: vitlab's ViT uses exact GELU ('gelu')")
    image_size, patch_size = get("image_size", 224), get("patch_size", 16)
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise ValueError(f"vitlab's ViT needs square images and patches, got {image_size} and {patch_size}")
    dim = get("hidden_size", 768)
    # ViTForImageClassification's classifier reads the class token itself; a pooler saved beside it is unused.
    has_pooler = "pooler.dense.weight" in state and "classifier.weight" not in state
    if has_pooler and (get("pooler_act", "tanh") != "tanh" or get("pooler_output_size") not in (None, dim)):
        raise ValueError("vitlab's pre-logits layer is Linear(D, D) + tanh; this pooler differs")
    return ViTConfig(image_size=image_size, in_channels=get("num_channels", 3), patch_size=patch_size,
                     num_classes=state["classifier.weight"].shape[0] if "classifier.weight" in state else 0,
                     dim=dim, depth=get("num_hidden_layers", 12), heads=get("num_attention_heads", 12),
                     mlp_ratio=get("intermediate_size", 4 * dim) / dim, qkv_bias=get("qkv_bias", True),
                     norm_eps=get("layer_norm_eps", 1e-12), representation_size=dim if has_pooler else None)


def from_hf(model_or_state_dict: nn.Module | Mapping[str, Tensor], config: Mapping[str, Any] | Any | None = None
            ) -> ViT:
    """A vitlab ``ViT`` computing the same function as a Hugging Face ``ViTForImageClassification``
    (its logits) or ``ViTModel`` (its ``pooler_output``, through a pre-logits layer, and a
    feature-only model; without a pooler, the normalized class token).

    Given the model, its ``config`` is used; given a state dict (transformers 4 or 5 names, with or
    without the ``vit.`` prefix), pass the model's ``config.json`` as a dict. ``ViTForMaskedImageModeling``
    and other heads are not converted.
    """
    if isinstance(model_or_state_dict, nn.Module):
        config = model_or_state_dict.config
        state = model_or_state_dict.state_dict()
    elif config is None:
        raise ValueError("from_hf needs the model's config (config.json as a dict) with a state dict")
    else:
        state = model_or_state_dict
    state = _hf_names(state)
    vit_config = _hf_config(config, state)
    # ViTModel(use_mask_token=True)'s mask token only serves masked image modelling; a pooler beside a
    # classifier is unused by ViTForImageClassification.
    ignore = [r"embeddings\.mask_token"] + ([r"pooler\..*"] if "classifier.weight" in state else [])
    return _load_converted(ViT(vit_config), state, HF_NAMES, "Hugging Face", ignore)


# -------------------------------------------------------------------------------------- any state dict
def _detect_library(state: Mapping[str, Tensor]) -> str:
    keys = set(state)
    if "pos_embed.table" in keys or "cls_token.token" in keys:
        return "vitlab"
    if "conv_proj.weight" in keys:
        return "torchvision"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf"
    if "patch_embed.proj.weight" in keys and "pos_embed" in keys:
        return "timm"
    raise CheckpointError(f"cannot tell which library these weights come from (first names: {sorted(keys)[:5]}); "
                          "vitlab reads ViT weights from vitlab, timm, torchvision and Hugging Face")


def _vitlab_config_from_state(state: Mapping[str, Tensor], heads: int | None) -> ViTConfig:
    dim, features = state["patch_embed.proj.weight"].shape
    positions = state["pos_embed.table"].shape[1] if "pos_embed.table" in state else None
    if positions is None:
        raise CheckpointError("vitlab weights without a learned position table need their config.json: load the "
                              "run folder instead of the weights file")
    grid = math.isqrt(positions - (2 if "dist_token" in state else 1))
    patch = math.isqrt(features // 3) if features % 3 == 0 and math.isqrt(features // 3) ** 2 * 3 == features \
        else math.isqrt(features)
    channels = features // (patch * patch)
    rep = state.get("pre_logits.0.weight")
    return ViTConfig(image_size=grid * patch, in_channels=channels, patch_size=patch,
                     num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0, dim=dim,
                     depth=_depth(list(state), r"blocks\.(\d+)\."), heads=_default_heads(dim, heads),
                     mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
                     qkv_bias="blocks.0.attn.qkv.bias" in state, representation_size=None if rep is None else
                     rep.shape[0])


def from_state_dict(state: Mapping[str, Tensor], *, heads: int | None = None,
                    hf_config: Mapping[str, Any] | None = None, source: str = "the weights") -> ViT:
    """A ``ViT`` from a state dict of any of the four libraries (detected from the tensor names)."""
    library = _detect_library(state)
    if library == "timm":
        return from_timm(state, heads=heads)
    if library == "torchvision":
        return from_torchvision(state, heads=heads)
    if library == "hf":
        if hf_config is None:
            raise CheckpointError(f"{source} are a Hugging Face ViT: put its config.json beside the file (or load the "
                                  "model folder) so the heads, sizes and LayerNorm epsilon are known")
        return from_hf(state, hf_config)
    config = _vitlab_config_from_state(state, heads)
    model = _as_deit(config) if "dist_token" in state else ViT(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{source} do not fit the inferred vitlab config {config}: {error}") from None
    return model.eval()


# ----------------------------------------------------------------------------------- adapting a model
def adapt(model: ViT, num_classes: int | None = None, image_size: int | None = None,
          input_size: int | None = None) -> ViT:
    """A copy of ``model`` (a ViT, DeiT or Swin) for a new task. A Swin takes a new head only: its
    windows are built for its resolution, so a new ``image_size`` or ``input_size`` is refused.

    ``num_classes``: when it differs from the model's, a new zero-initialized head without the pre-logits
    layer (see :meth:`ViT.reset_classifier`; call that directly for a new head of the same size); ``image_size``:
    the resolution the model runs at, its learned position table resampled to the new patch grid
    (:func:`resample_position_table`; a sinusoidal table is recomputed); ``input_size``: the size of
    the images it will be given, resized to ``image_size`` inside the model (e.g. 32x32 CIFAR
    images into a 224x224 model). ``None`` keeps each as it is.
    """
    config = model.config
    is_swin = getattr(type(model), "family", "") == "swin"
    if is_swin:
        if (image_size or config.image_size) != config.image_size or (input_size or config.image_size) != \
                config.image_size:
            raise ValueError(f"this Swin runs at {config.image_size}x{config.image_size}: its windows, masks and "
                             "stage grids are built for that size, and vitlab does not resize a Swin (no "
                             "--image-size; resize the images to it instead)")
        new_config = config
    else:
        new_image = image_size or config.image_size
        # The images it is given: as asked, else as before if they were resized, else the new resolution.
        new_input = input_size or config.input_size or new_image
        new_config = dataclasses.replace(config, image_size=new_image,
                                         input_size=None if new_input == new_image else new_input)
    adapted = type(model)(new_config).to(next(model.parameters()).device)
    state = model.state_dict()
    if not is_swin and new_config.image_size != config.image_size and config.positional == "learned":
        grid = new_config.image_size // new_config.patch_size
        state["pos_embed.table"] = resample_position_table(state["pos_embed.table"], grid,
                                                           num_prefix_tokens=model.num_prefix_tokens)
    elif not is_swin and config.positional == "sinusoidal":
        state["pos_embed.table"] = adapted.state_dict()["pos_embed.table"]
    adapted.load_state_dict(state)
    if num_classes is not None and num_classes != config.num_classes:
        adapted.reset_classifier(num_classes)
    return adapted.train(model.training)


# ------------------------------------------------------------------------------------------ loading by name
def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "", parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline_if_unreachable() -> Iterator[None]:
    """When the Hugging Face Hub cannot be reached, switch huggingface_hub to offline mode for the call:
    files already in its cache still load, and a missing one fails at once instead of after a minute
    of retries."""
    try:
        from huggingface_hub import constants  # lazy: an optional extra (comes with transformers)
    except ImportError:
        yield
        return

    offline = constants.HF_HUB_OFFLINE
    # Behind a proxy a direct connection says nothing about reachability: leave the decision to the hub.
    if not offline and not urllib.request.getproxies().get("https") and not _reachable(constants.ENDPOINT):
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline


@contextmanager
def _fetching(spec: str, how: str) -> Iterator[None]:
    """Turn a failed download into one :class:`WeightsUnavailableError` saying what to do instead."""
    try:
        yield
    except (WeightsUnavailableError, KeyboardInterrupt):
        raise
    # Network errors differ per library and version (requests, httpx, urllib, hub errors, some of them
    # ValueErrors): only the download runs in here, so whatever it raises is a failed fetch.
    except Exception as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split()).rstrip(".")
        raise WeightsUnavailableError(
            f"could not fetch {spec} ({how}): {reason[:300]}. No network here? On a connected machine, loading "
            f"{spec} once downloads it into that library's cache, which later loads use offline. Or download the "
            "weights file yourself and pass its path instead (a .safetensors, .pth or .bin file, or a Hugging Face "
            "model folder), e.g. vitlab train --init path/to/model.safetensors") from None


def _import(module: str, spec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise WeightsUnavailableError(f"{spec} needs the {module.split('.')[0]} package: pip install "
                                      f"'vitlab[pretrained]' (or pip install {module.split('.')[0]})") from None


def _load_timm(name: str, spec: str) -> ViT:
    timm = _import("timm", spec)
    architecture, _, tag = name.partition(".")
    if not timm.is_model(architecture):
        raise ValueError(f"timm has no model {architecture!r}; ViTs it knows include "
                         f"{', '.join(timm.list_models('vit_*patch16_224*')[:6])}")
    if timm.models.model_entrypoint(architecture).__module__.rsplit(".", 1)[-1] not in (
            "vision_transformer", "deit", "swin_transformer"):
        raise ValueError(f"timm's {architecture} is not a plain VisionTransformer or SwinTransformer; vitlab "
                         "converts those (vit_tiny/small/base/large/huge_patch*, deit_*, swin_*)")
    if tag and name not in timm.list_pretrained(architecture + ".*"):
        raise ValueError(f"timm has no pretrained weights {name!r}; tags for {architecture}: "
                         f"{', '.join(timm.list_pretrained(architecture + '.*')) or 'none'}")
    with _fetching(spec, "timm downloads from the Hugging Face Hub"), _hub_offline_if_unreachable():
        model = timm.create_model(name, pretrained=True)
    return from_timm(model)


def _load_torchvision(name: str, spec: str) -> ViT:
    arch, _, weights = name.partition(".")
    if arch not in torchvision.models.list_models():
        raise ValueError(f"torchvision has no model {arch!r}; its ViTs are "
                         f"{', '.join(m for m in torchvision.models.list_models() if m.startswith('vit'))}")
    with _fetching(spec, "torchvision downloads from download.pytorch.org"):
        model = torchvision.models.get_model(arch, weights=weights or "DEFAULT")
    return from_torchvision(model)


def _load_hf(repo: str, spec: str) -> ViT:
    transformers = _import("transformers", spec)
    with _fetching(spec, "transformers downloads from the Hugging Face Hub"), _hub_offline_if_unreachable():
        config = transformers.AutoConfig.from_pretrained(repo)
    if getattr(config, "model_type", None) != "vit":
        raise ValueError(f"{repo} is a {getattr(config, 'model_type', '?')} model; vitlab converts ViTs only")
    classifier = "ViTForImageClassification" in (getattr(config, "architectures", None) or [])
    model_class = transformers.ViTForImageClassification if classifier else transformers.ViTModel
    with _fetching(spec, "transformers downloads from the Hugging Face Hub"), _hub_offline_if_unreachable():
        model = model_class.from_pretrained(repo)
    return from_hf(model)


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` (no code can run) or ``.pth``/``.pt``/``.bin`` (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path} is corrupt or not a safetensors file: {error}") from None
    if path.suffix not in (".pth", ".pt", ".bin"):
        raise ValueError(f"{path}: weights files are .safetensors, .pth, .pt or .bin")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError (unsafe content), RuntimeError (corrupt zip), EOFError
        raise CheckpointError(f"{path} is corrupt or holds more than tensors (refused without running it): "
                              f"{type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    for key in ("model", "state_dict", "model_state"):  # training checkpoints wrap the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a vitlab run folder: its ``config.json`` names a registered model family."""
    config_file = Path(path) / "config.json"
    try:
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and isinstance(config.get("model"), dict) and "family" in config["model"]


def _load_path(path: Path, heads: int | None, open_run: Callable[[Path], nn.Module] | None) -> nn.Module:
    if path.is_dir():
        if is_run_folder(path):
            if open_run is None:
                raise ValueError(f"{path} is a vitlab run folder: load it with vitlab.runfolder.load_model")
            model = open_run(path)
            if not isinstance(model, ViT) and getattr(type(model), "family", "") != "swin":
                raise ValueError(f"{path} holds a {type(model).__name__}; vitlab.pretrained loads ViTs and Swins")
            return model
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{path} is neither a vitlab run folder nor a Hugging Face model folder "
                                  "(no config.json + model.safetensors / pytorch_model.bin)")
        path = weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    state = _read_weights_file(path)
    config_file = path.with_name("config.json")
    hf_config = None
    if config_file.is_file():
        try:
            hf_config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{config_file} is not valid JSON: {error}") from None
    return from_state_dict(state, heads=heads, hf_config=hf_config, source=str(path))


def load(spec: str, num_classes: int | None = None, image_size: int | None = None, input_size: int | None = None,
         *, heads: int | None = None, open_run: Callable[[Path], nn.Module] | None = None) -> ViT:
    """A pretrained ViT by name or path, adapted to a task (see :func:`adapt`).

    ``spec``: ``timm:NAME`` (e.g. ``timm:vit_base_patch16_224.augreg_in21k_ft_in1k``),
    ``torchvision:NAME[.WEIGHTS]`` (e.g. ``torchvision:vit_b_16.IMAGENET1K_V1``; default weights
    otherwise), ``hf:REPO_ID`` (e.g. ``hf:google/vit-base-patch16-224``), a vitlab run folder, a
    Hugging Face model folder, or a weights file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``)
    from any of these libraries. ``heads``: for a bare state dict (default ``dim // 64``). ``open_run``
    reads a vitlab run folder (:func:`vitlab.runfolder.load_model` passes it: run folders are a floor above
    this module).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError("spec must be timm:NAME, torchvision:NAME, hf:REPO_ID, a run folder or a weights file")
    prefix, _, name = spec.partition(":")
    if prefix in ("timm", "torchvision", "hf") and name:
        model = {"timm": _load_timm, "torchvision": _load_torchvision, "hf": _load_hf}[prefix](name, spec)
    elif Path(spec).expanduser().exists():
        model = _load_path(Path(spec).expanduser(), heads, open_run)
    else:
        raise FileNotFoundError(f"{spec!r} is neither timm:NAME, torchvision:NAME, hf:REPO_ID nor an existing run "
                                "folder or weights file")
    return adapt(model, num_classes=num_classes, image_size=image_size, input_size=input_size).eval()
