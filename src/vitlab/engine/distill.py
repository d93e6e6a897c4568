"""Knowledge distillation in training: loading the teacher and assembling the criterion a model trains with.

The losses themselves are in :mod:`vitlab.models.losses` (a floor down, so that a model can own its
criterion). This module loads a teacher from a run folder or a pretrained spec, checks it against the
student and its data, and asks the model for its criterion (``training_criterion``; every one-head model
uses :func:`~vitlab.models.losses.default_criterion`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..core.io import unwrap
from ..models.losses import Criterion, Renormalize, default_criterion
from ..runfolder.run import Run, load_model
from .recipe import TrainConfig

__all__ = ["load_teacher", "make_criterion"]


def load_teacher(spec: str | os.PathLike[str], device: torch.device | str = "cpu") -> nn.Module:
    """A teacher model from a vitlab run folder (any family, e.g. a CNN from ``make baselines``) or any
    pretrained spec (:func:`vitlab.runfolder.load_model`); in eval mode, frozen, on ``device``."""
    return load_model(spec).to(device).eval().requires_grad_(False)


def _match_data(teacher: nn.Module, spec: str, data: Any, device: torch.device | str) -> nn.Module:
    """Check a run-folder teacher's classes against the student's data, and put a :class:`Renormalize` in
    front of it when the two were standardized with different statistics."""
    run = Run(spec)
    if data is None or not run.exists():
        return teacher
    recorded = run.record().dataset
    if recorded.classes and list(recorded.classes) != list(data.classes):
        raise ValueError(f"the teacher {spec} was trained on the classes {recorded.classes}, the student's data "
                         f"has {list(data.classes)}: the teacher's logits would mean other classes")
    theirs = (list(recorded.mean), list(recorded.std))
    mine = (list(data.mean), list(data.std))
    if not theirs[0] or theirs == mine:
        return teacher
    return nn.Sequential(Renormalize(mine, theirs), teacher).to(device).eval()


def _check_teacher(student: nn.Module, teacher: nn.Module, spec: str) -> None:
    """The teacher must predict the student's classes from images of the same channels and size."""
    mine, theirs = getattr(student, "config", None), getattr(teacher, "config", None)
    for field, what in (("num_classes", "predicts {} classes"), ("in_channels", "takes {}-channel images")):
        a, b = getattr(mine, field, None), getattr(theirs, field, None)
        if None not in (a, b) and a != b:
            raise ValueError(f"the teacher {spec} {what.format(b)} but the student {what.format(a)}: "
                             "distil from a teacher trained on the same data")
    a = getattr(mine, "input_size", None) or getattr(mine, "image_size", None)
    b = getattr(theirs, "input_size", None) or getattr(theirs, "image_size", None)
    if None not in (a, b) and a != b:
        raise ValueError(f"the teacher {spec} takes {b}x{b} images but the student {a}x{a}: the teacher "
                         "sees the student's batch, so both must take the same image size")


def make_criterion(model: nn.Module, config: TrainConfig, device: torch.device | str = "cpu",
                   data: Any = None) -> Criterion:
    """The criterion ``fit`` trains ``model`` with: the model's own (``training_criterion``, e.g. DeiT's two
    heads, an early-exit ViT's exits) or :func:`~vitlab.models.losses.default_criterion`, given the recipe's
    teacher, distillation kind, weight, temperature and label smoothing.

    Checks what can be checked before the first step: the teacher exists and predicts as many classes
    as the student from images of the same size and channels; given the student's training set
    (``data``) and a teacher run folder, its classes must be the same, in the same order, and a
    teacher trained with other normalization statistics gets the batch re-standardized to its own."""
    net = unwrap(model)
    teacher = None
    if config.teacher:
        teacher = load_teacher(config.teacher, device)
        _check_teacher(net, teacher, config.teacher)
        teacher = _match_data(teacher, config.teacher, data, device)
    build = getattr(net, "training_criterion", default_criterion)
    return build(teacher, config.distill, config.distill_alpha, config.distill_tau, config.label_smoothing)
