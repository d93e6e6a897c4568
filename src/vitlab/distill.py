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

The teacher is any vitlab run folder or anything :func:`vitlab.pretrained.load` accepts; it runs
in eval mode without gradients and is never updated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["soft_distillation_loss", "hard_distillation_loss", "DistillationLoss", "Renormalize", "load_teacher",
           "make_criterion", "split_outputs"]

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


class DistillationLoss(nn.Module):
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


def load_teacher(spec: str | os.PathLike[str], device: torch.device | str = "cpu") -> nn.Module:
    """A teacher model from a vitlab run folder (any family, e.g. a CNN from ``make baselines``) or any
    spec of :func:`vitlab.pretrained.load`; in eval mode, frozen, on ``device``."""
    from .runs import Run

    run = Run(spec)
    if run.exists():
        teacher = run.model(map_location=device)
    else:
        from .pretrained import load

        teacher = load(str(spec)).to(device)
    return teacher.eval().requires_grad_(False)


def _match_data(teacher: nn.Module, spec: str, data: Any, device: torch.device | str) -> nn.Module:
    """Check a run-folder teacher's classes against the student's data, and put a :class:`Renormalize` in
    front of it when the two were standardized with different statistics."""
    from .runs import Run

    run = Run(spec)
    if data is None or not run.exists():
        return teacher
    recorded = run.config().get("dataset", {})
    if recorded.get("classes") and list(recorded["classes"]) != list(data.classes):
        raise ValueError(f"the teacher {spec} was trained on the classes {recorded['classes']}, the student's data "
                         f"has {list(data.classes)}: the teacher's logits would mean other classes")
    theirs = (recorded.get("mean"), recorded.get("std"))
    mine = (list(data.mean), list(data.std))
    if None in theirs or (list(theirs[0]), list(theirs[1])) == mine:
        return teacher
    return nn.Sequential(Renormalize(mine, (list(theirs[0]), list(theirs[1]))), teacher).to(device).eval()


def make_criterion(model: nn.Module, config: TrainConfig, device: torch.device | str = "cpu",
                   data: Any = None) -> Callable[[Tensor, Any, Tensor], Tensor] | None:
    """The loss ``fit`` trains ``model`` with: ``None`` (plain cross-entropy) for a one-head model without
    a teacher, else a :class:`DistillationLoss` (a two-head DeiT always needs one, teacher or not).

    Checks what can be checked before the first step: the teacher exists and predicts as many classes
    as the student from images of the same size and channels; given the student's training set
    (``data``) and a teacher run folder, its classes must be the same, in the same order, and a
    teacher trained with other normalization statistics gets the batch re-standardized to its own."""
    from .checkpoint import unwrap

    net = unwrap(model)
    exits = getattr(getattr(net, "config", None), "head_depths", None)
    if exits is not None:  # an early-exit model: its exits learn from the labels, and maybe from its final head
        from .early_exit import ExitLoss

        if config.distill in ("soft", "hard"):
            raise ValueError("an early-exit model distils from its own final head: use --distill self (or none)")
        return ExitLoss(exits, "self" if config.distill == "self" else "none", config.distill_alpha,
                        config.distill_tau, config.label_smoothing)
    if config.distill == "self":
        raise ValueError(f"--distill self trains the early exits of a model that has them (vit_mnist_exits, "
                         f"vit_cifar_small_exits); {type(net).__name__} has none")
    two_heads = getattr(net, "has_distillation_head", False)
    if config.distill == "none" and not two_heads:
        return None
    teacher = load_teacher(config.teacher, device) if config.teacher else None
    if teacher is not None:
        mine, theirs = getattr(net, "config", None), getattr(teacher, "config", None)
        for field, what in (("num_classes", "predicts {} classes"), ("in_channels", "takes {}-channel images")):
            a, b = getattr(mine, field, None), getattr(theirs, field, None)
            if None not in (a, b) and a != b:
                raise ValueError(f"the teacher {config.teacher} {what.format(b)} but the student {what.format(a)}: "
                                 "distil from a teacher trained on the same data")
        a = getattr(mine, "input_size", None) or getattr(mine, "image_size", None)
        b = getattr(theirs, "input_size", None) or getattr(theirs, "image_size", None)
        if None not in (a, b) and a != b:
            raise ValueError(f"the teacher {config.teacher} takes {b}x{b} images but the student {a}x{a}: the teacher "
                             "sees the student's batch, so both must take the same image size")
        teacher = _match_data(teacher, config.teacher, data, device)
    return DistillationLoss(teacher, config.distill, config.distill_alpha, config.distill_tau, config.label_smoothing)
