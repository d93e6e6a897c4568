"""A small, readable training engine, split as in torchvision's classification reference scripts:

* :func:`train_step`: forward, cross-entropy (optionally label-smoothed), backward, gradient
  clipping, optimizer step, learning-rate step (linear warmup then cosine decay);
* :func:`train_one_epoch`: a seeded shuffle of the training set, one :func:`train_step` per batch;
* :func:`evaluate`: accuracy, loss, per-class accuracy and confusion matrix;
* :func:`fit`: epochs of the two, with a checkpoint after each (resumable to the same result).

:func:`vitlab.precision.autocast_context` is the one place that decides the precision (``--precision
auto|fp32|bf16``), for training and evaluation; ``--compile`` runs the training step through
:func:`torch.compile` (opt-in: it is slower on some presets, see the bench).
The recipe is a :class:`TrainConfig`; :func:`vitlab.runs.train_run` drives a whole experiment.

It runs unchanged on CPU, on one GPU, and under
``torchrun --nproc_per_node=N`` (DistributedDataParallel: every process trains
on its own shard, metrics are summed across processes, only rank 0 writes
files and shows progress).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import get_augmentation
from .checkpoint import CheckpointError, unwrap
from .configs import Config, ConfigError
from .data import BatchLoader, ImageTensorDataset
from .early_exit import ExitLoss, ExitOutputs
from .precision import Precision, autocast_context
from .runtime import pick_device, seed_everything

if TYPE_CHECKING:
    from .runs import Run

__all__ = ["TrainConfig", "recipe", "FINETUNE_RECIPE", "PROBE_RECIPE", "DistContext", "leave_process_group",
           "autocast_context", "train_step", "train_one_epoch", "evaluate", "fit", "plan_for_time_budget",
           "make_optimizer", "weight_decay_groups", "layer_decay_groups", "freeze_backbone", "set_train_mode",
           "warmup_cosine", "optimizer_step", "rng_state", "set_rng_state", "training_state",
           "restore_training_state", "recipe_differences"]


Optimizer = Literal["adamw", "adam", "sgd"]
Freeze = Literal["none", "backbone"]
Distill = Literal["none", "soft", "hard", "self"]

#: Fine-tuning a pretrained model (``vitlab train --init``): the fields that replace the model's recipe.
#: A lower peak learning rate than training from scratch (the features are already good: large steps
#: would wreck them before the new head has learned to read them), a short warmup while the
#: zero-initialized head settles, and a cosine down to almost nothing.
FINETUNE_RECIPE: dict[str, Any] = {"lr": 3e-4, "min_lr": 1e-6, "warmup_epochs": 0.5, "weight_decay": 0.05,
                                   "epochs": 10}
#: A linear probe (``--freeze backbone``): only the head trains, a convex problem: a larger step,
#: no weight decay, no warmup.
PROBE_RECIPE: dict[str, Any] = {"lr": 1e-3, "min_lr": 1e-6, "warmup_epochs": 0.0, "weight_decay": 0.0,
                                "epochs": 10}


def _help(text: str) -> dict[str, str]:
    """Field metadata: the ``--flag`` help text the command line shows (defaults are added from the field)."""
    return {"help": text}


@dataclass
class TrainConfig(Config):
    """The training recipe. Saved in ``config.json`` and checked on ``--resume``.

    Each field becomes a ``vitlab train`` flag (``lr`` -> ``--lr``) with the help text in its metadata,
    so the command line never repeats a default by hand.
    """

    epochs: int = field(default=10, metadata=_help("passes over the training set"))
    batch_size: int = field(default=128, metadata=_help("images per optimizer step"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    min_lr: float = field(default=1e-5, metadata=_help("final learning rate of the cosine schedule"))
    weight_decay: float = field(default=0.05, metadata=_help("decoupled weight decay (biases, norms, tokens "
                                                             "and position tables excluded)"))
    optimizer: Optimizer = field(default="adamw", metadata=_help("optimizer"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (SGD only)"))
    warmup_epochs: float = field(default=1.0, metadata=_help("linear warmup length, in epochs"))
    label_smoothing: float = field(default=0.0, metadata=_help("label smoothing of the cross-entropy loss"))
    grad_clip: float | None = field(default=1.0, metadata=_help("max gradient norm; 0 disables"))
    augment: str = field(default="none", metadata=_help("batch augmentation (vitlab.augment.AUGMENTATIONS)"))
    seed: int = field(default=0, metadata=_help("fixes initialization, data order and splits"))
    eval_batch_size: int = field(default=1000, metadata=_help("images per evaluation batch"))
    precision: Precision = field(default="auto", metadata=_help(
        "fp32, bf16 (autocast), or auto: bf16 where the device has fast bf16 units (a CUDA GPU with bf16 tensor "
        "cores, a CPU with AMX), else fp32 (vitlab.precision)"))
    compile: bool = field(default=False, metadata=_help("torch.compile the model for training (opt-in: slower on "
                                                        "some presets and machines; `make bench` measures it)"))
    max_steps_per_epoch: int | None = field(default=None, metadata=_help("cut epochs short (smoke tests)"))
    freeze: Freeze = field(default="none", metadata=_help("'backbone': train only the classifier head (a linear "
                                                          "probe); frozen layers also run in eval mode"))
    layer_decay: float = field(default=1.0, metadata=_help("layer-wise learning-rate decay: block i of L learns at "
                                                           "lr * decay^(L + 1 - i); 1 disables"))
    teacher: str | None = field(default=None, metadata=_help("knowledge distillation: the teacher, a run folder or a "
                                                             "pretrained spec (see vitlab.distill)"))
    distill: Distill = field(default="none", metadata=_help("distillation loss: soft (KL to the teacher's softened "
                                                            "probabilities), hard (its argmax as a label), or self "
                                                            "(an early-exit model's exits learn from its final head)"))
    distill_alpha: float = field(default=0.5, metadata=_help("weight of the distillation term (the labels get "
                                                             "1 - alpha)"))
    distill_tau: float = field(default=1.0, metadata=_help("temperature of soft distillation"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """As :meth:`Config.from_dict`, and reads the runs recorded before ``precision`` existed: their
        ``amp`` flag meant bf16 on CUDA and fp32 on CPUs, which ``auto`` now does (``amp: false``: fp32)."""
        if isinstance(values, dict) and "amp" in values and "precision" not in values:
            legacy = values["amp"]
            values = {k: v for k, v in values.items() if k != "amp"}
            values["precision"] = "fp32" if legacy is False else "auto"
        return super().from_dict(values)

    def __post_init__(self) -> None:
        super().__post_init__()  # optimizer and precision: checked against their Literal types
        from .augment import AUGMENTATIONS

        if self.grad_clip == 0:  # --grad-clip 0 means "no clipping"
            self.grad_clip = None

        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"TrainConfig.{name} must be positive, got {value!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch <= 0:
            raise ConfigError("TrainConfig.max_steps_per_epoch must be positive or None, "
                              f"got {self.max_steps_per_epoch}")
        if self.min_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.momentum < 0:
            raise ConfigError("TrainConfig.min_lr, weight_decay, warmup_epochs and momentum cannot be negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"TrainConfig.grad_clip must be positive, or None to disable, got {self.grad_clip}")
        if (self.teacher is None) != (self.distill in ("none", "self")):
            raise ConfigError("distillation needs both a teacher and a kind: --teacher RUN --distill soft|hard "
                              "(self-distillation, --distill self, takes no teacher) "
                              f"(got teacher={self.teacher!r}, distill={self.distill!r})")
        if not 0.0 <= self.distill_alpha <= 1.0 or not self.distill_tau > 0:
            raise ConfigError(f"TrainConfig.distill_alpha must be in [0, 1] and distill_tau positive, got "
                              f"{self.distill_alpha} and {self.distill_tau}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"TrainConfig.layer_decay must be in (0, 1] (1 disables it), got {self.layer_decay}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.augment!r}; available: {', '.join(AUGMENTATIONS)}")


def recipe(model_name: str | None = None, **overrides: Any) -> TrainConfig:
    """The tuned :class:`TrainConfig` of a registered model (generic defaults for ``None`` or a model
    without one), with fields replaced. ``None`` overrides are ignored, so command-line flags left
    unset keep the recipe's value."""
    from .registry import get_model

    tuned = get_model(model_name).recipe if model_name is not None else {}
    return TrainConfig.from_dict({**tuned, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class DistContext:
    """Where this process sits in a (possibly) distributed job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> DistContext:
        """Read torchrun's variables and join the process group (gloo on CPU, nccl on CUDA)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def all_sum(self, tensor: Tensor) -> Tensor:
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor


def leave_process_group(wait: bool = True) -> None:
    """Leave the torchrun process group, if this process joined one.

    Without this, a process that finishes first (rank 1 returns while rank 0 still writes the run)
    exits with gloo's threads alive, and the C++ runtime can abort it ("terminate called without an
    active exception"), failing the whole job. ``wait`` first lets every rank reach this point; pass
    ``False`` after an error or an interrupt, where another rank may never arrive.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        if wait:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


Criterion = Callable[[Tensor, Any, Tensor], Tensor]


#: Fields that change how fast a run goes, not what it computes: a resumed run may change them.
SPEED_ONLY_FIELDS = ("compile",)


def recipe_differences(saved: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """What a resumed run's recipe changes: ``{field: (saved, now)}`` between a recorded ``train``
    section (old runs' ``amp`` read as :meth:`TrainConfig.from_dict` does) and ``config``, leaving out
    :data:`SPEED_ONLY_FIELDS`. Raises :class:`ConfigError` for a recorded section that is not valid."""
    before = TrainConfig.from_dict(saved).to_dict()
    now = config.to_dict()
    return {k: (before[k], now[k]) for k in now if k not in SPEED_ONLY_FIELDS and before[k] != now[k]}


def train_step(model: nn.Module, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer,
               config: TrainConfig, autocast: AbstractContextManager[Any] | None = None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               criterion: Criterion | None = None) -> tuple[Tensor, Tensor]:
    """One optimizer step: forward, loss, backward, gradient clipping, optimizer and scheduler step.
    ``images (B, C, H, W)``, ``labels (B,)`` -> ``(loss (), logits (B, classes))``, both detached.

    The loss is the (label-smoothed) cross-entropy, or ``criterion(images, outputs, labels)`` (e.g.
    :class:`vitlab.distill.DistillationLoss`, whose teacher sees the same batch). A model with two
    heads (DeiT in training) returns a pair of logits; the returned logits are their mean, as in
    evaluation."""
    with autocast if autocast is not None else nullcontext():
        outputs = model(images)
        if criterion is None and isinstance(outputs, ExitOutputs):  # every head learns from the labels
            criterion = ExitLoss([1] * len(outputs.logits), kind="none", label_smoothing=config.label_smoothing)
        if criterion is None and isinstance(outputs, tuple):  # two heads, no teacher: both learn from the labels
            from .distill import DistillationLoss

            criterion = DistillationLoss(None, label_smoothing=config.label_smoothing)
        if criterion is not None:
            loss = criterion(images, outputs, labels)
    if criterion is None:
        loss = F.cross_entropy(outputs.float(), labels, label_smoothing=config.label_smoothing)
    if isinstance(outputs, ExitOutputs):  # an early-exit model is scored by its final head, as in evaluation
        logits = outputs.final
    else:
        logits = (outputs[0] + outputs[1]) / 2 if isinstance(outputs, tuple) else outputs
    optimizer_step(model, loss, optimizer, config.grad_clip, scheduler)
    return loss.detach(), logits.detach()


def optimizer_step(model: nn.Module, loss: Tensor, optimizer: torch.optim.Optimizer, grad_clip: float | None,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """The step after the loss, for every task: backward, gradient clipping (``grad_clip``; 0 or None
    disables it), optimizer and scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def train_one_epoch(model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer, config: TrainConfig,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *, steps: int | None = None,
                    dist: DistContext | None = None, description: str = "train", progress: bool = False,
                    criterion: Criterion | None = None) -> dict[str, float]:
    """Train for one pass of ``loader`` (or its first ``steps`` batches).

    Returns ``{"train_loss", "train_accuracy", "train_samples", "train_images_per_s"}``, summed over
    every process under DDP. ``model`` may be the DDP wrapper; the loader's device is used.
    """
    dist = dist or DistContext()
    device = loader.device
    autocast = autocast_context(device, config.precision)
    steps = len(loader) if steps is None else min(steps, len(loader))
    set_train_mode(model)
    started = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    batches = tqdm(loader, total=steps, desc=description, leave=False, disable=not progress)
    for step, (images, labels) in enumerate(batches):
        if step >= steps:
            break
        loss, logits = train_step(model, images, labels, optimizer, config, autocast, scheduler, criterion)
        totals += torch.stack([loss.double() * len(labels), (logits.argmax(1) == labels).sum().double(),
                               torch.tensor(float(len(labels)), dtype=torch.float64, device=device)])
        if progress and step % 10 == 0:
            batches.set_postfix(loss=f"{totals[0].item() / totals[2].item():.4f}",
                                acc=f"{totals[1].item() / totals[2].item():.4f}")
    batches.close()
    dist.all_sum(totals)
    elapsed = time.perf_counter() - started
    return {"train_loss": totals[0].item() / totals[2].item(), "train_accuracy": totals[1].item() / totals[2].item(),
            "train_images_per_s": totals[2].item() / elapsed, "train_samples": int(totals[2].item())}


def plan_for_time_budget(model: nn.Module, train_set: ImageTensorDataset, val_set: ImageTensorDataset | None,
                         config: TrainConfig, budget_s: float, device: torch.device | str | None = None,
                         probe_steps: int = 6, max_epochs: int | None = None) -> TrainConfig:
    """Fit the recipe to a wall-clock budget: measure seconds per step on a copy of the model,
    then choose how many epochs (or, if not even one fits, how many steps of one epoch) the
    budget allows, counting one validation pass per epoch. The schedule (warmup + cosine) is
    then laid out over exactly that many steps, as for any other run. ``max_epochs`` caps the
    plan, so a fast machine stops at the recipe's length instead of filling the budget.
    """
    import copy

    if not budget_s > 0:
        raise ValueError(f"time budget must be positive, got {budget_s}")
    device = pick_device(None if device is None else str(device))
    from .distill import make_criterion

    probe = copy.deepcopy(model).to(device)
    if config.freeze == "backbone":
        freeze_backbone(probe)
    set_train_mode(probe)
    criterion = make_criterion(probe, config, device, train_set)  # a teacher's forward pass is part of every step
    optimizer = make_optimizer(probe, config)
    step_model = torch.compile(probe) if config.compile else probe  # compiled in the first, untimed steps
    loader = BatchLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=True, device=device,
                         augment=get_augmentation(config.augment))
    autocast = autocast_context(device, config.precision)
    rng = torch.get_rng_state()
    timings = []

    def batches() -> Any:  # as many epochs as the probe needs (a tiny training set has one batch per epoch)
        for epoch in range(probe_steps + 2):
            loader.set_epoch(epoch)
            yield from loader

    first_steps_s = 0.0
    started = time.perf_counter()
    for step, (images, labels) in enumerate(batches()):  # timed from batch fetch (with augmentation) to step end
        if step == probe_steps + 2:
            break
        train_step(step_model, images, labels, optimizer, config, autocast, criterion=criterion)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:  # the first steps pay one-off allocation costs
            timings.append(time.perf_counter() - started)
        else:
            first_steps_s += time.perf_counter() - started
        started = time.perf_counter()
    torch.set_rng_state(rng)
    if not timings:
        raise ValueError("training set too small to measure a training step")
    step_s = sorted(timings)[len(timings) // 2]
    if config.compile:  # fit compiles the model again: that time comes out of the budget
        budget_s = max(budget_s - max(0.0, first_steps_s - 2 * step_s), 0.1 * budget_s)
    eval_s = 0.0
    if val_set is not None and len(val_set):
        sample = val_set.subset(torch.arange(min(len(val_set), 500)))
        evaluate(probe, sample, config.eval_batch_size, device, precision=config.precision)  # warm-up: one-off costs
        started = time.perf_counter()
        evaluate(probe, sample, config.eval_batch_size, device, precision=config.precision)
        eval_s = (time.perf_counter() - started) * len(val_set) / min(len(val_set), 500)
    steps_per_epoch = len(loader)
    fits = budget_s / (steps_per_epoch * step_s + eval_s)  # epochs that fit, fractional
    if max_epochs is not None and fits >= max_epochs:
        return dataclasses.replace(config, epochs=max_epochs, max_steps_per_epoch=None)
    if fits >= 3:  # rounding down wastes at most a quarter of the budget
        return dataclasses.replace(config, epochs=int(fits), max_steps_per_epoch=None)
    if fits >= 1:
        # Between one and three epochs: round up and shorten every epoch, so that rounding down
        # does not throw away up to half the budget (each epoch then sees a fresh shuffled part).
        epochs = math.ceil(fits)
        steps = int((budget_s - epochs * eval_s) // (epochs * step_s))
        return dataclasses.replace(config, epochs=epochs, max_steps_per_epoch=min(max(1, steps), steps_per_epoch))
    steps = max(1, int((budget_s - eval_s) // step_s))
    return dataclasses.replace(config, epochs=1, max_steps_per_epoch=min(steps, steps_per_epoch),
                               warmup_epochs=min(config.warmup_epochs, 0.1))


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ``1/warmup`` to 1, then cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: decayed weights, and the rest (biases, norm weights, and the names in
    the model's ``no_weight_decay()``, e.g. the class token and the learned position table)."""
    excluded = set(unwrap(model).no_weight_decay()) if hasattr(unwrap(model), "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in unwrap(model).named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() <= 1 or name in excluded else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups for layer-wise learning-rate decay (BEiT, MAE): one group per (layer, decayed or
    not), each with ``lr_scale = layer_decay ** (num_layers - 1 - layer)``: the head learns at the full
    rate, each block below it ``layer_decay`` times slower, the embeddings slowest. The model names
    a parameter's layer with ``layer_id(name)`` and counts them with ``num_layers``."""
    net = unwrap(model)
    if not hasattr(net, "layer_id"):
        raise ConfigError(f"layer-wise learning-rate decay needs a model with layers ids (a transformer); "
                          f"{type(net).__name__} has none: use layer_decay=1")
    excluded = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        layer, decayed = net.layer_id(name), not (param.dim() <= 1 or name in excluded)
        group = groups.setdefault((layer, decayed), {
            "params": [], "weight_decay": weight_decay if decayed else 0.0,
            "lr_scale": layer_decay ** (net.num_layers - 1 - layer)})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def freeze_backbone(model: nn.Module) -> list[str]:
    """Freeze every parameter except the classifier head's (``model.get_classifier()``), for a linear
    probe; returns the names of the parameters that still train."""
    net = unwrap(model)
    if not hasattr(net, "get_classifier"):
        raise ConfigError(f"{type(net).__name__} does not say which layer is its classifier (get_classifier())")
    head = {id(p) for p in net.get_classifier().parameters()}
    if not head:
        raise ConfigError("the model has no classifier head to train (num_classes=0)")
    for param in net.parameters():
        param.requires_grad_(id(param) in head)
    return [name for name, param in net.named_parameters() if param.requires_grad]


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except for modules whose parameters are all frozen: those run in eval mode,
    so a frozen backbone applies no dropout or stochastic depth and its BatchNorm keeps its statistics."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over :func:`weight_decay_groups` (or :func:`layer_decay_groups` when
    ``config.layer_decay < 1``; each group's learning rate is ``lr * lr_scale``)."""
    if config.layer_decay < 1.0:
        groups = layer_decay_groups(model, config.weight_decay, config.layer_decay)
        for group in groups:
            group["lr"] = config.lr * group["lr_scale"]
    else:
        groups = weight_decay_groups(model, config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999))
    if config.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient, not decoupled.
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ImageTensorDataset, batch_size: int = 1000,
             device: torch.device | str | None = None, dist: DistContext | None = None,
             progress: bool = False, precision: str = "auto") -> dict[str, Any]:
    """Accuracy, mean loss, per-class accuracy and confusion matrix of ``model`` on ``dataset``.

    Returns ``{"accuracy", "loss", "n", "per_class_accuracy" (list), "confusion" (classes x classes
    list, rows = true class, columns = predicted)}``. Under DDP each rank scores its shard and
    the counts are summed. ``precision`` as in training (:mod:`vitlab.precision`).
    """
    dist = dist or DistContext()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    classes = dataset.num_classes
    confusion = torch.zeros(classes, classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    loader = BatchLoader(dataset, batch_size, device=device, rank=dist.rank, world_size=dist.world_size)
    autocast = autocast_context(device, precision)  # resolved once, not per batch
    for images, labels in tqdm(loader, desc="evaluate", leave=False, disable=not progress):
        with autocast:
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        predictions = logits.argmax(dim=1)
        confusion.index_put_((labels, predictions), torch.ones_like(labels, dtype=torch.float64), accumulate=True)
    if dist.enabled:
        # Samples past the equal shards (fewer than world_size) are scored on rank 0 alone.
        leftover = len(dataset) % dist.world_size
        if leftover and dist.is_main:
            tail = dataset.subset(torch.arange(len(dataset) - leftover, len(dataset)))
            extra = evaluate(model, tail, batch_size, device, precision=precision)
            confusion += torch.tensor(extra["confusion"], dtype=torch.float64, device=device)
            loss_sum += extra["loss"] * extra["n"]
        dist.all_sum(confusion)
        dist.all_sum(loss_sum)
    model.train(was_training)
    n = confusion.sum().item()
    per_class_total = confusion.sum(dim=1).clamp_min(1)
    return {
        "accuracy": confusion.diag().sum().item() / max(n, 1),
        "loss": loss_sum.item() / max(n, 1),
        "n": int(n),
        "per_class_accuracy": (confusion.diag() / per_class_total).tolist(),
        "confusion": confusion.long().tolist(),
    }


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The random generators' state, for a resumable checkpoint: the CPU's and, on CUDA, the device's."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved, so a resumed run draws the same numbers."""
    # Both setters want CPU ByteTensors; a checkpoint loaded with map_location=cuda moved them.
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def training_state(epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, history: list[dict[str, Any]],
                   config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds after ``epoch`` finished epochs: everything a resumed run needs to
    continue to the same result (read back by :func:`restore_training_state`)."""
    return {"epoch": epoch, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "rng": rng_state(device),
            "train_config": config.to_dict()}


def restore_training_state(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: torch.optim.lr_scheduler.LRScheduler, device: torch.device,
                           source: str | os.PathLike[str]) -> tuple[int, list[dict[str, Any]]]:
    """Load a :func:`training_state` into the model, optimizer, scheduler and random generators; returns
    the finished epochs and the history. A state that does not fit is a :class:`CheckpointError` naming
    ``source``."""
    try:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {source} does not match the model: {error}") from None
    set_rng_state(state["rng"], device)
    return int(state["epoch"]), list(state["history"])


def fit(model: nn.Module, train_set: ImageTensorDataset, val_set: ImageTensorDataset | None,
        config: TrainConfig, out_dir: str | os.PathLike[str] | Run | None = None, resume: bool = False,
        device: torch.device | str | None = None, progress: bool = True,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` on ``train_set``; return the per-epoch history (list of dicts).

    Each epoch: :func:`train_one_epoch` (seeded shuffle, :func:`train_step` per batch, the warmup +
    cosine schedule stepped per batch), then :func:`evaluate` on ``val_set``. With ``out_dir`` (a
    folder or a :class:`vitlab.runs.Run`), after every epoch the run's weights, resumable state
    (optimizer, scheduler, RNG, history: what ``resume=True`` needs to continue to the same result)
    and ``history.csv`` are written atomically. ``progress=False`` silences the bars.
    ``on_epoch_end(row)`` is called after each epoch (after the checkpoint is written).
    """
    from .runs import Run

    device = pick_device(None if device is None else str(device))
    dist = DistContext.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if dist.enabled and device.type == "cpu":
        # Processes on one machine share its cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    show = progress and dist.is_main
    seed_everything(config.seed + dist.rank)
    run = out_dir if isinstance(out_dir, Run) or out_dir is None else Run(out_dir)

    model.to(device)
    if config.freeze == "backbone":  # before DDP, which registers a gradient hook per trainable parameter
        freeze_backbone(model)
    train_model: nn.Module = model
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:  # the first steps pay the compilation; weights are saved from the plain model
        train_model = torch.compile(train_model)
    loader = BatchLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=True, device=device,
                         augment=get_augmentation(config.augment), rank=dist.rank, world_size=dist.world_size)
    steps_per_epoch = len(loader)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"training set of {len(train_set)} images is smaller than one batch of {config.batch_size}"
                         + (f" per process ({dist.world_size} processes)" if dist.enabled else ""))
    from .distill import make_criterion

    criterion = make_criterion(model, config, device, train_set)
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch), config.min_lr / config.lr))

    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and run is not None and run.has_state():
        state = run.load_state(map_location=device)
        try:
            diff = recipe_differences(state.get("train_config", {}), config)
        except ConfigError as error:
            raise CheckpointError(f"cannot resume {run.state_path}: its training config is not valid here: "
                                  f"{error}") from None
        if diff:
            raise CheckpointError(f"cannot resume {run.state_path}: the training config differs from the one it "
                                  f"was made with (field: (checkpoint, now)) {diff}")
        start_epoch, history = restore_training_state(state, model, optimizer, scheduler, device, run.state_path)

    epochs_bar = tqdm(range(start_epoch, config.epochs), desc="epochs", disable=not show, initial=start_epoch,
                      total=config.epochs)
    for epoch in epochs_bar:
        loader.set_epoch(epoch)
        started = time.perf_counter()
        # The peak group's rate (with layer decay, the head's; the embeddings' is lower).
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": max(group["lr"] for group in optimizer.param_groups)}
        row.update(train_one_epoch(train_model, loader, optimizer, config, scheduler, steps=steps_per_epoch,
                                   dist=dist, description=f"epoch {epoch + 1}/{config.epochs}", progress=show,
                                   criterion=criterion))
        if val_set is not None and len(val_set):
            val = evaluate(model, val_set, config.eval_batch_size, device, dist, precision=config.precision)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        row["epoch_time_s"] = time.perf_counter() - started
        history.append(row)
        if show:
            epochs_bar.set_postfix({k: f"{row[k]:.4f}" for k in ("train_loss", "train_accuracy", "val_accuracy")
                                    if k in row})
        if run is not None and dist.is_main:
            run.save_weights(model)
            run.save_state(training_state(epoch + 1, model, optimizer, scheduler, history, config, device))
            run.write_history(history)
        if dist.enabled:
            torch_dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(row)
    epochs_bar.close()
    return history
