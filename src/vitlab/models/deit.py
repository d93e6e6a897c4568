"""DeiT (Touvron et al. 2021): a ViT with a distillation token, so that it can learn from a teacher.

The sequence gets a second learned token right after the class token. It passes through the same
blocks and attends to the same patches, but its output feeds its own head, which is trained to
match a teacher (usually a CNN, whose inductive bias the ViT lacks; see :mod:`vitlab.distill`)::

    images (N, C, H, W)
      -> PatchEmbedding                          (N, P, dim)
      -> [class token, distillation token, patches] + positions   (N, P + 2, dim)
      -> depth x EncoderBlock, LayerNorm         (N, P + 2, dim)
      -> head(token 0), head_dist(token 1)       (N, classes) each

In training the model returns both heads' logits ``(class, distillation)``; in evaluation their
average, which is what DeiT reports (timm's ``VisionTransformerDistilled`` does the same, and
:func:`vitlab.pretrained.from_timm` converts it to this class).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .losses import DistillationLoss
from .registry import get_model, register_model
from .vit import PRESETS, ViT, ViTConfig, zero_head

__all__ = ["DeiTConfig", "DeiT"]


@dataclass
class DeiTConfig(ViTConfig):
    """A :class:`~vitlab.model.ViTConfig`; the sequence holds one more token (the distillation token)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool != "cls" or self.representation_size is not None:
            raise ValueError("DeiT reads its class and distillation tokens: pool must be 'cls', without pre-logits")

    @property
    def num_tokens(self) -> int:
        """Patches plus the class and distillation tokens."""
        return self.num_patches + 2


class DeiT(ViT):
    """Data-efficient image Transformer. Shapes: ``(N, C, H, W) -> (N, classes)`` in evaluation,
    ``-> ((N, classes), (N, classes))`` (class head, distillation head) in training."""

    family = "deit"
    config_class = DeiTConfig
    has_attention_maps = True
    has_distillation_head = True
    num_prefix_tokens = 2

    def __init__(self, config: DeiTConfig | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or DeiTConfig(), **overrides)
        if not isinstance(config, DeiTConfig):
            raise TypeError(f"DeiT needs a DeiTConfig, got {type(config).__name__}")
        super().__init__(config)
        self.dist_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.head_dist: nn.Module = nn.Linear(config.dim, config.num_classes) if config.num_classes else nn.Identity()
        self._init_weights(self.head_dist)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"dist_token"}

    def get_classifier(self) -> nn.Module:
        """Both heads: what a linear probe trains and a new task replaces."""
        return nn.ModuleList([self.head, self.head_dist])

    def reset_classifier(self, num_classes: int) -> None:
        """New zero-initialized class and distillation heads (see :meth:`ViT.reset_classifier`)."""
        super().reset_classifier(num_classes)
        self.head_dist = zero_head(self.config.dim, num_classes, self.dist_token.device)

    def layer_id(self, parameter_name: str) -> int:
        return 0 if parameter_name == "dist_token" else super().layer_id(parameter_name)

    def prefix_tokens(self, patches: Tensor) -> Tensor:
        """``(N, P, dim) -> (N, P + 2, dim)``: class token, distillation token, then the patches."""
        with_class = self.cls_token(patches)                                   # (N, P + 1, dim)
        dist = self.dist_token.expand(patches.shape[0], -1, -1)
        return torch.cat([with_class[:, :1], dist, with_class[:, 1:]], dim=1)

    def forward_heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, T, dim)`` normalized tokens -> (class-head logits, distillation-head logits)."""
        return self.head(features[:, 0]), self.head_dist(features[:, 1])

    def training_criterion(self, teacher: nn.Module | None = None, kind: str = "none", alpha: float = 0.5,
                           temperature: float = 1.0, label_smoothing: float = 0.0) -> DistillationLoss:
        """Its training loss: both heads learn, from the labels (``kind="none"``: the mean of the two heads'
        cross-entropies) or the distillation head from a ``teacher``
        (:class:`~vitlab.models.losses.DistillationLoss`)."""
        if kind == "self":
            raise ValueError("--distill self trains the early exits of a model that has them; DeiT distils from a "
                             "teacher (--teacher RUN --distill soft|hard) or trains both heads on the labels")
        return DistillationLoss(teacher, kind, alpha, temperature, label_smoothing)

    def forward_head(self, features: Tensor) -> Tensor | tuple[Tensor, Tensor]:  # type: ignore[override]
        """Both heads' logits in training; their average in evaluation."""
        class_logits, dist_logits = self.forward_heads(features)
        if self.training:
            return class_logits, dist_logits
        return (class_logits + dist_logits) / 2


# The ViT presets' twins, with the same recipes (the teacher and distillation are chosen per run).
register_model("deit_mnist", DeiT, DeiTConfig(**dataclasses.asdict(PRESETS["vit_mnist"])),
               description="vit_mnist + a distillation token (DeiT)", recipe=get_model("vit_mnist").recipe)
register_model("deit_cifar_small", DeiT, DeiTConfig(**dataclasses.asdict(PRESETS["vit_cifar_small"])),
               description="vit_cifar_small + a distillation token (DeiT)", recipe=get_model("vit_cifar_small").recipe)
