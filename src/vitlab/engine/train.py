"""A small, readable training engine for classifiers, split as in torchvision's classification reference scripts:

* :func:`train_step`: forward, the model's criterion (cross-entropy, label-smoothed or distilled), backward,
  gradient clipping, optimizer step, learning-rate step (linear warmup then cosine decay);
* :func:`train_one_epoch`: a seeded shuffle of the training set, one :func:`train_step` per batch;
* :func:`evaluate`: accuracy, loss, per-class accuracy and confusion matrix;
* :func:`weight_average`: an exponential moving average of the weights (``--ema-decay``), updated after every
  step, which validation, test and the saved model then use;
* :func:`fit`: epochs of the two through the shared epoch loop (:mod:`vitlab.engine.loop`), with a
  checkpoint after each (resumable to the same result).

:func:`vitlab.core.precision.autocast_context` is the one place that decides the precision (``--precision
auto|fp32|bf16``), for training and evaluation; ``--compile`` runs the training step through
:func:`torch.compile` (opt-in: it is slower on some presets, see the bench). The recipe is a
:class:`~vitlab.engine.recipe.TrainConfig`; :func:`vitlab.engine.classify.train_run` drives a whole run.

It runs unchanged on CPU, on one GPU, and under ``torchrun --nproc_per_node=N`` (DistributedDataParallel:
every process trains on its own shard, metrics are summed across processes, only rank 0 writes files and
shows progress).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..core.configs import ConfigError
from ..core.io import CheckpointError, unwrap
from ..core.layout import model_memory_format, to_memory_format
from ..core.precision import autocast_context
from ..core.runtime import pick_device, seed_everything
from ..data.augment import get_augmentation
from ..data.datasets import ImageTensorDataset
from ..data.loader import BatchLoader
from ..models.losses import Criterion, default_criterion
from ..runfolder.run import Run
from .budget import BudgetPlan, apply_plan, plan_steps
from .distill import make_criterion
from .loop import DistContext, leave_process_group, rng_state, run_epochs, set_rng_state
from .recipe import FINETUNE_RECIPE, PROBE_RECIPE, TrainConfig, recipe, recipe_differences

__all__ = ["TrainConfig", "recipe", "FINETUNE_RECIPE", "PROBE_RECIPE", "DistContext", "leave_process_group",
           "autocast_context", "train_step", "train_one_epoch", "evaluate", "fit", "plan_for_time_budget",
           "make_optimizer", "weight_decay_groups", "layer_decay_groups", "freeze_backbone", "set_train_mode",
           "warmup_cosine", "schedule_factor", "change_length", "optimizer_step", "rng_state", "set_rng_state",
           "load_modules", "recipe_differences",
           "apply_plan", "label_criterion", "ClassifierTrainer", "weight_average",
           "CLASSIFY_HISTORY_FIELDS", "budget_plan"]

#: The columns of a classification run's ``history.csv``.
CLASSIFY_HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                           "epoch_time_s", "train_images_per_s", "train_samples"]


def label_criterion(model: nn.Module, label_smoothing: float = 0.0) -> Criterion:
    """The model's criterion without a teacher: every head learns from the labels (its ``training_criterion``,
    else plain cross-entropy)."""
    build = getattr(unwrap(model), "training_criterion", default_criterion)
    return build(None, "none", 0.5, 1.0, label_smoothing)


def train_step(model: nn.Module, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer,
               config: TrainConfig, autocast: AbstractContextManager[Any] | None = None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               criterion: Criterion | None = None) -> tuple[Tensor, Tensor]:
    """One optimizer step: forward, loss, backward, gradient clipping, optimizer and scheduler step.
    ``images (B, C, H, W)``, ``labels (B,)`` -> ``(loss (), logits (B, classes))``, both detached.

    The loss is ``criterion(images, outputs, labels)`` (:func:`vitlab.engine.distill.make_criterion`: a
    distillation loss's teacher sees the same batch), by default :func:`label_criterion`; the returned
    logits are ``criterion.logits(outputs)``, what evaluation would score (a two-head DeiT: their mean)."""
    criterion = criterion if criterion is not None else label_criterion(model, config.label_smoothing)
    with autocast if autocast is not None else nullcontext():
        outputs = model(images)
        loss = criterion(images, outputs, labels)
    logits = criterion.logits(outputs)
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
                    criterion: Criterion | None = None, average: AveragedModel | None = None) -> dict[str, float]:
    """Train for one pass of ``loader`` (or its first ``steps`` batches); ``average`` (:func:`weight_average`)
    takes in the weights after every step.

    Returns ``{"train_loss", "train_accuracy", "train_samples", "train_images_per_s"}``, summed over
    every process under DDP. ``model`` may be the DDP wrapper; the loader's device is used.
    """
    dist = dist or DistContext()
    device = loader.device
    autocast = autocast_context(device, config.precision)
    criterion = criterion if criterion is not None else label_criterion(model, config.label_smoothing)
    steps = len(loader) if steps is None else min(steps, len(loader))
    set_train_mode(model)
    started = time.perf_counter()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    batches = tqdm(loader, total=steps, desc=description, leave=False, disable=not progress)
    for step, (images, labels) in enumerate(batches):
        if step >= steps:
            break
        loss, logits = train_step(model, images, labels, optimizer, config, autocast, scheduler, criterion)
        if average is not None:
            average.update_parameters(unwrap(model))
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


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights (Polyak averaging, as in timm's ``ModelEmaV3``):
    after each step, ``average = decay * average + (1 - decay) * weights``, buffers (e.g. batch-norm
    statistics) included; the first update copies the weights. Its ``.module`` has the model's architecture,
    so it is evaluated and saved like the model. Late in training the weights jitter around a minimum; their
    average sits nearer its centre, which usually scores a little better than the last step's weights."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"an EMA decay is in (0, 1), got {decay}")
    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup from ``1/warmup`` to 1, then cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def schedule_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The recipe's learning-rate multiplier per step (:func:`warmup_cosine` over ``config.epochs`` epochs of
    ``steps_per_epoch`` steps), for a ``LambdaLR``."""
    return warmup_cosine(config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch),
                         config.min_lr / config.lr)


def change_length(config: TrainConfig, scheduler: torch.optim.lr_scheduler.LambdaLR, steps_per_epoch: int,
                  epochs: int) -> tuple[TrainConfig, bool]:
    """Re-plan a run to ``epochs`` epochs part-way through, where that is exact: while every step taken so far
    was a warm-up step, whose rate does not depend on the length, the run goes on exactly as one planned to
    ``epochs`` from the start would. Returns the recipe to train with and whether it changed (a run past its
    warm-up keeps its length: its cosine has begun)."""
    if epochs < 1:
        raise ValueError(f"a run needs at least one epoch, got {epochs}")
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    if epochs == config.epochs or scheduler.last_epoch > warmup_steps:
        return config, False
    config = dataclasses.replace(config, epochs=epochs)
    scheduler.lr_lambdas = [schedule_factor(config, steps_per_epoch)] * len(scheduler.optimizer.param_groups)
    return config, True


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
    loader = BatchLoader(dataset, batch_size, device=device, rank=dist.rank, world_size=dist.world_size,
                         memory_format=model_memory_format(model))  # batches laid out as the weights are
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


def load_modules(state: dict[str, Any], modules: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Load ``state[name]`` into each of ``modules`` (models, optimizers, schedulers: anything with
    ``load_state_dict``); a state that does not fit is a :class:`CheckpointError` naming ``source``."""
    try:
        for name, module in modules.items():
            module.load_state_dict(state[name])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {source} does not match the model: {error}") from None


class ClassifierTrainer:
    """A classifier's training state for the epoch loop (:func:`vitlab.engine.loop.run_epochs`): the model
    (wrapped for DDP and compiled when asked), its loader, criterion, optimizer and schedule."""

    history_fields = CLASSIFY_HISTORY_FIELDS
    progress_fields = ("train_loss", "train_accuracy", "val_accuracy")

    def __init__(self, model: nn.Module, train_set: ImageTensorDataset, val_set: ImageTensorDataset | None,
                 config: TrainConfig, device: torch.device, dist: DistContext) -> None:
        seed_everything(config.seed + dist.rank)
        self.model, self.val_set, self.config, self.device, self.dist = model, val_set, config, device, dist
        model.to(device)
        memory_format = to_memory_format(model, config.memory_format)  # before DDP, EMA and the optimizer
        if config.freeze == "backbone":  # before DDP, which registers a gradient hook per trainable parameter
            freeze_backbone(model)
        self.train_model: nn.Module = model
        if dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:  # the first steps pay the compilation; weights are saved from the plain model
            self.train_model = torch.compile(self.train_model)
        self.loader = BatchLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=True,
                                  device=device, augment=get_augmentation(config.augment), rank=dist.rank,
                                  world_size=dist.world_size, memory_format=memory_format)
        self.steps_per_epoch = min(len(self.loader), config.max_steps_per_epoch or len(self.loader))
        if self.steps_per_epoch == 0:
            raise ValueError(f"training set of {len(train_set)} images is smaller than one batch of "
                             f"{config.batch_size}" + (f" per process ({dist.world_size} processes)"
                                                       if dist.enabled else ""))
        self.criterion = make_criterion(model, config, device, train_set)
        self.optimizer = make_optimizer(model, config)
        self.average = weight_average(model, config.ema_decay) if config.ema_decay else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, schedule_factor(config, self.steps_per_epoch))

    def set_epochs(self, epochs: int) -> bool:
        self.config, changed = change_length(self.config, self.scheduler, self.steps_per_epoch, epochs)
        return changed

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        self.loader.set_epoch(epoch)
        # The peak group's rate (with layer decay, the head's; the embeddings' is lower).
        row: dict[str, Any] = {"lr": max(group["lr"] for group in self.optimizer.param_groups)}
        row.update(train_one_epoch(self.train_model, self.loader, self.optimizer, self.config, self.scheduler,
                                   steps=self.steps_per_epoch, dist=self.dist, progress=progress,
                                   description=f"epoch {epoch + 1}/{self.config.epochs}", criterion=self.criterion,
                                   average=self.average))
        return row

    def validate(self) -> dict[str, Any]:
        if self.val_set is None or not len(self.val_set):
            return {}
        val = evaluate(self.weights(), self.val_set, self.config.eval_batch_size, self.device, self.dist,
                       precision=self.config.precision)
        return {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}

    def state_dict(self) -> dict[str, Any]:
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "train_config": self.config.to_dict()}
        if self.average is not None:
            state["average"] = self.average.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
        try:
            diff = recipe_differences(state.get("train_config", {}), self.config)
        except ConfigError as error:
            raise CheckpointError(f"cannot resume {source}: its training config is not valid here: {error}") from None
        if diff:
            raise CheckpointError(f"cannot resume {source}: the training config differs from the one it was made "
                                  f"with (field: (checkpoint, now)) {diff}")
        modules = {"model": unwrap(self.model), "optimizer": self.optimizer, "scheduler": self.scheduler}
        load_modules(state, modules | ({"average": self.average} if self.average is not None else {}), source)

    def weights(self) -> nn.Module:
        """What is validated, tested and saved: the weight average when there is one, else the model."""
        return self.average.module if self.average is not None else self.model


def fit(model: nn.Module, train_set: ImageTensorDataset, val_set: ImageTensorDataset | None,
        config: TrainConfig, out_dir: str | os.PathLike[str] | Run | None = None, resume: bool = False,
        device: torch.device | str | None = None, progress: bool = True,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` on ``train_set``; return the per-epoch history (list of dicts).

    Each epoch: :func:`train_one_epoch` (seeded shuffle, :func:`train_step` per batch, the warmup +
    cosine schedule stepped per batch), then :func:`evaluate` on ``val_set``. With ``out_dir`` (a
    folder or a :class:`vitlab.runfolder.Run`), after every epoch the run's weights, resumable state
    (optimizer, scheduler, RNG, history: what ``resume=True`` needs to continue to the same result)
    and ``history.csv`` are written atomically. ``progress=False`` silences the bars.
    ``on_epoch_end(row)`` is called after each epoch (after the checkpoint is written).
    """
    dist = DistContext.from_env(pick_device(None if device is None else str(device)).type)
    device = dist.place(pick_device(None if device is None else str(device)))
    run = out_dir if isinstance(out_dir, Run) or out_dir is None else Run(out_dir)
    trainer = ClassifierTrainer(model, train_set, val_set, config, device, dist)
    return run_epochs(trainer, config.epochs, run=run, resume=resume, device=device, dist=dist, progress=progress,
                      on_epoch_end=on_epoch_end)


def budget_plan(model: nn.Module, train_set: ImageTensorDataset, val_set: ImageTensorDataset | None,
                config: TrainConfig, budget_s: float, device: torch.device | str | None = None,
                probe_steps: int = 6, max_epochs: int | None = None) -> BudgetPlan:
    """The :class:`~vitlab.engine.budget.BudgetPlan` of a classifier: seconds per step measured on a copy of the
    model (batch fetch and augmentation included; a compiled step's compilation comes out of the budget), one
    validation pass per epoch measured on up to 500 images."""
    if not budget_s > 0:
        raise ValueError(f"time budget must be a positive number of seconds, got {budget_s}")
    device = pick_device(None if device is None else str(device))
    probe = copy.deepcopy(model).to(device)
    memory_format = to_memory_format(probe, config.memory_format)  # timed in the layout the run will train in
    if config.freeze == "backbone":
        freeze_backbone(probe)
    set_train_mode(probe)
    criterion = make_criterion(probe, config, device, train_set)  # a teacher's forward pass is part of every step
    optimizer = make_optimizer(probe, config)
    step_model = torch.compile(probe) if config.compile else probe  # compiled in the first, untimed steps
    average = weight_average(probe, config.ema_decay) if config.ema_decay else None  # its update is part of a step
    loader = BatchLoader(train_set, config.batch_size, shuffle=True, seed=config.seed, drop_last=True, device=device,
                         augment=get_augmentation(config.augment), memory_format=memory_format)
    autocast = autocast_context(device, config.precision)

    def batches() -> Iterator[tuple[Tensor, Tensor]]:  # as many epochs as the probe needs (tiny sets: 1 batch each)
        for epoch in range(probe_steps + 2):
            loader.set_epoch(epoch)
            yield from loader

    stream = batches()

    def step() -> None:  # timed from batch fetch (with augmentation) to step end
        images, labels = next(stream)
        train_step(step_model, images, labels, optimizer, config, autocast, criterion=criterion)
        if average is not None:
            average.update_parameters(probe)

    def eval_seconds(_: float) -> float:  # one validation pass, measured on up to 500 images after a warm-up
        if val_set is None or not len(val_set):
            return 0.0
        sample = val_set.subset(torch.arange(min(len(val_set), 500)))
        evaluate(probe, sample, config.eval_batch_size, device, precision=config.precision)
        started = time.perf_counter()
        evaluate(probe, sample, config.eval_batch_size, device, precision=config.precision)
        return (time.perf_counter() - started) * len(val_set) / len(sample)

    return plan_steps(step, len(loader), budget_s, eval_seconds, max_epochs=max_epochs, device=device,
                      probe_steps=probe_steps, compiled=config.compile)


def plan_for_time_budget(model: nn.Module, train_set: ImageTensorDataset, val_set: ImageTensorDataset | None,
                         config: TrainConfig, budget_s: float, device: torch.device | str | None = None,
                         probe_steps: int = 6, max_epochs: int | None = None) -> TrainConfig:
    """Fit the recipe to a wall-clock budget (:func:`budget_plan`): the number of epochs (or, if not even one
    fits, of steps of one epoch) the budget allows, counting one validation pass per epoch. The schedule
    (warmup + cosine) is then laid out over exactly that many steps, as for any other run. ``max_epochs``
    caps the plan, so a fast machine stops at the recipe's length instead of filling the budget."""
    plan = budget_plan(model, train_set, val_set, config, budget_s, device, probe_steps, max_epochs)
    return apply_plan(config, plan)
