"""Knowledge distillation: a student learns from a teacher's predictions as well as from the labels.

Hinton et al. (2015) train a student to match a teacher's *softened* class probabilities; DeiT
(Touvron et al. 2021) also uses the teacher's *hard* decision as a second label, through a
dedicated distillation token and head (:mod:`vitlab.deit`). With label loss weight ``1 - alpha``
and distillation weight ``alpha``::

    soft:  (1 - a) CE(z_cls, y) + a T^2 KL( softmax(t / T) || softmax(z_dist / T) )
    hard:  (1 - a) CE(z_cls, y) + a CE(z_dist, argmax t)

``z_cls`` and ``z_dist`` are the student's class-head and distillation-head logits (the same
tensor for a one-head student), ``t`` the teacher's logits on the *same augmented batch*, ``T``
the temperature. The ``T^2`` keeps the soft term's gradients the same size whatever ``T`` (the
softened gradients shrink as ``1/T^2``). The KL divergence is averaged over the batch (Hinton's
definition; DeiT's code sums it and divides by batch x classes, which makes its soft term
``classes`` times smaller at the same ``alpha``).

Every classifier trains through a :class:`Criterion`: ``criterion(images, outputs, labels)`` gives the loss
and ``criterion.logits(outputs)`` the logits that training accuracy scores (as evaluation would). A model
whose training outputs are more than one tensor owns its criterion (``training_criterion``: DeiT's two
heads here, an early-exit ViT's :class:`~vitlab.models.early_exit.ExitLoss`); every other model trains
with :func:`default_criterion`. So the training engine never needs to know which model it trains.

The teacher (loaded by :mod:`vitlab.engine.distill` from a run folder or a pretrained spec) runs in eval
mode without gradients and is never updated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["soft_distillation_loss", "hard_distillation_loss", "Criterion", "LabelLoss", "DistillationLoss",
           "Renormalize", "default_criterion", "split_outputs", "DISTILL_KINDS"]

#: What a student learns from: ``none`` (the labels), a teacher's ``soft`` probabilities or ``hard`` decisions,
#: or ``self`` (an early-exit model's exits learn from its own final head).
DISTILL_KINDS: tuple[str, ...] = ("none", "soft", "hard", "self")

Outputs = Tensor | tuple[Tensor, Tensor]


def soft_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch.

    Shapes: ``(N, K), (N, K) -> ()``. Zero when the student's softened distribution equals the teacher's.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature ** 2


def hard_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy against the teacher's decision ``argmax(teacher)``. Shapes: ``(N, K), (N, K) -> ()``."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


def split_outputs(outputs: Outputs) -> tuple[Tensor, Tensor]:
    """``(class logits, distillation logits)``: a DeiT's two heads in training, or one head's logits twice."""
    if isinstance(outputs, tuple):
        return outputs
    return outputs, outputs


class Criterion(nn.Module):
    """A classifier's training loss. ``forward(images, outputs, labels) -> ()``; :meth:`logits` turns the
    model's training outputs into the ``(N, classes)`` logits that are scored (one tensor: itself)."""

    def logits(self, outputs: Any) -> Tensor:
        return outputs


class LabelLoss(Criterion):
    """Cross-entropy on the labels (label-smoothed by ``label_smoothing``), computed in fp32.
    ``(N, K) logits, (N,) labels -> ()``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, images: Tensor, outputs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), labels, label_smoothing=self.label_smoothing)


class DistillationLoss(Criterion):
    """The training loss of a student, with or without a teacher.

    ``kind="none"``: cross-entropy on the labels (for a two-head DeiT, the mean of both heads'
    cross-entropies, so that both heads learn). ``"soft"`` / ``"hard"``: see the module docstring.
    Called as ``loss(images, outputs, labels)``; the teacher sees the same ``images``.
    """

    def __init__(self, teacher: nn.Module | None, kind: str = "none", alpha: float = 0.5, temperature: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if kind not in ("none", "soft", "hard"):
            raise ValueError(f"distillation kind must be 'none', 'soft' or 'hard', got {kind!r}")
        if (teacher is None) != (kind == "none"):
            raise ValueError("soft and hard distillation need a teacher; 'none' takes none")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.temperature, self.label_smoothing = kind, alpha, temperature, label_smoothing

    def train(self, mode: bool = True) -> DistillationLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains: no dropout, BatchNorm statistics frozen
        return self

    def forward(self, images: Tensor, outputs: Outputs, labels: Tensor) -> Tensor:
        class_logits, dist_logits = split_outputs(outputs)
        label_loss = F.cross_entropy(class_logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.kind == "none":
            if dist_logits is class_logits:
                return label_loss
            dist_label_loss = F.cross_entropy(dist_logits.float(), labels, label_smoothing=self.label_smoothing)
            return 0.5 * (label_loss + dist_label_loss)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        if teacher_logits.shape != dist_logits.shape:
            raise ValueError(f"the teacher gives {tuple(teacher_logits.shape)} logits but the student "
                             f"{tuple(dist_logits.shape)}: they must predict the same classes")
        if self.kind == "soft":
            teacher_loss = soft_distillation_loss(dist_logits, teacher_logits, self.temperature)
        else:
            teacher_loss = hard_distillation_loss(dist_logits, teacher_logits)
        return (1.0 - self.alpha) * label_loss + self.alpha * teacher_loss

    def logits(self, outputs: Outputs) -> Tensor:
        """Two heads are scored by their mean, as the model predicts in evaluation."""
        class_logits, dist_logits = split_outputs(outputs)
        return class_logits if dist_logits is class_logits else (class_logits + dist_logits) / 2


class Renormalize(nn.Module):
    """Re-standardize a batch from the student's statistics to the teacher's:
    ``x * std_s + mean_s`` gives the [0, 1] pixels back, then ``(pixels - mean_t) / std_t``.
    Shapes: ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, student: tuple[list[float], list[float]], teacher: tuple[list[float], list[float]]) -> None:
        super().__init__()
        for name, values in (("mean_s", student[0]), ("std_s", student[1]), ("mean_t", teacher[0]),
                             ("std_t", teacher[1])):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return (images * self.std_s + self.mean_s - self.mean_t) / self.std_t


def default_criterion(teacher: nn.Module | None = None, kind: str = "none", alpha: float = 0.5,
                      temperature: float = 1.0, label_smoothing: float = 0.0) -> Criterion:
    """The criterion of a model with one head: cross-entropy on the labels, or with a ``teacher``
    soft or hard distillation (:class:`DistillationLoss`)."""
    if kind == "self":
        raise ValueError("--distill self trains the early exits of a model that has them (vit_mnist_exits, "
                         "vit_cifar_small_exits); this model has none")
    if teacher is None and kind == "none":
        return LabelLoss(label_smoothing)
    return DistillationLoss(teacher, kind, alpha, temperature, label_smoothing)
