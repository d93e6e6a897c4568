"""Training and evaluating dense models (segmentation, detection) on the MNIST canvases: run folders.

The classification engine (:mod:`vitlab.train`, :func:`vitlab.runs.train_run`) steps on
``(images, labels)``; a dense task steps on ``(images, masks)`` or ``(images, boxes, labels)`` with
its own loss and metrics, so it gets this small loop with the same recipe
(:class:`~vitlab.train.TrainConfig`: optimizer, warmup + cosine schedule, gradient clipping, seed),
the same run folder (``config.json``, ``history.csv``, ``metrics.json``, ``model.safetensors``,
``checkpoint.pt``, resumable after every epoch) and the same command (``vitlab train --task
segment|detect``).

* ``segment``: :class:`~vitlab.segmentation.Segmenter`; mIoU (with and without background), per-class
  IoU and pixel accuracy, on the validation canvases each epoch and the test canvases at the end;
* ``detect``: :class:`~vitlab.detection.YOLOS`; COCO mAP@[.5:.95], mAP@0.5, mAP@0.75 and per-class AP.

``init`` starts the encoder from a classification ViT (a run folder or any
:func:`vitlab.pretrained.load` spec): its position table is resampled to the canvas's patch grid and its
head dropped; the decoder or detection heads start fresh.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..analysis.plots import plot_history
from ..core.configs import ConfigError
from ..core.io import atomic_write, unwrap
from ..core.precision import autocast_context, describe_precision
from ..core.runtime import pick_device, seed_everything
from ..data.canvas import CanvasConfig, CanvasDataset, canvas_batches, load_canvas
from ..models.convert import adapt
from ..models.detection import DetectionMetrics, DetectionOutput, SetCriterion, postprocess, targets_from_canvas
from ..models.measure import count_parameters
from ..models.registry import create_model, get_model, model_names
from ..models.segmentation import SegmentationMetrics, segmentation_loss
from ..models.vit import ViT
from ..runfolder.run import Run, RunError, command_line, load_model, model_spec
from ..runfolder.schema import DatasetRecord, InitRecord, ModelRecord, RunConfig
from .budget import BudgetPlan, plan_steps
from .driver import Task, drive
from .loop import DistContext, Trainer
from .recipe import recipe
from .train import change_length, load_modules, make_optimizer, optimizer_step, schedule_factor

__all__ = ["TASKS", "DEFAULT_MODELS", "task_of", "dense_step", "evaluate_dense", "dense_run", "evaluate_dense_run",
           "plot_predictions", "init_encoder", "HISTORY_FIELDS"]

Task_ = Literal["segment", "detect"]
TASKS: tuple[str, ...] = ("segment", "detect")
DEFAULT_MODELS = {"segment": "segmenter_linear_canvas", "detect": "yolos_canvas"}
HISTORY_FIELDS = {
    "segment": ["epoch", "lr", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "epoch_time_s",
                "train_images_per_s"],
    "detect": ["epoch", "lr", "train_loss", "train_loss_class", "train_loss_bbox", "train_loss_giou", "val_loss",
               "val_map", "val_map_50", "epoch_time_s", "train_images_per_s"],
}
# Recipe fields the classification engine has and a dense run does not use: refused when set.
_UNSUPPORTED = {"augment": "none", "label_smoothing": 0.0, "freeze": "none", "layer_decay": 1.0, "teacher": None,
                "distill": "none", "ema_decay": 0.0, "memory_format": "auto"}


def task_of(model: nn.Module) -> str:
    """``"segment"``, ``"detect"``, or ``"classify"`` for every other vitlab model (also when wrapped by
    ``torch.compile`` or DDP)."""
    return getattr(type(unwrap(model)), "task", "classify")


def _loss(model: nn.Module, output: Tensor | DetectionOutput, masks: Tensor, boxes: Tensor, labels: Tensor,
          criterion: SetCriterion | None) -> tuple[Tensor, dict[str, float]]:
    if task_of(model) == "segment":
        return segmentation_loss(output, masks), {}
    assert criterion is not None
    return criterion(output, targets_from_canvas(boxes, labels, masks.shape[-1]))


def dense_step(model: nn.Module, batch: Sequence[Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, criterion: SetCriterion | None = None,
               grad_clip: float | None = 1.0, autocast: Any = None) -> tuple[float, dict[str, float]]:
    """One optimizer step on a canvas batch ``(images, masks, boxes, labels)`` (:func:`canvas_batches`).
    Returns the loss and, for detection, its three parts."""
    images, masks, boxes, labels = batch
    with autocast if autocast is not None else nullcontext():
        output = model(images)
    loss, parts = _loss(model, output, masks, boxes, labels, criterion)
    optimizer_step(model, loss, optimizer, grad_clip, scheduler)
    return loss.item(), parts


@torch.no_grad()
def evaluate_dense(model: nn.Module, dataset: CanvasDataset, batch_size: int = 500,
                   device: torch.device | str | None = None, precision: str = "auto") -> dict[str, Any]:
    """The task's metrics on ``dataset`` plus the mean loss and ``n``.

    Segmentation: :class:`~vitlab.segmentation.SegmentationMetrics` (``miou``, ``miou_objects``,
    ``per_class_iou``, ``pixel_accuracy``, ``confusion``); detection:
    :class:`~vitlab.detection.DetectionMetrics` (``map``, ``map_50``, ``map_75``, ``mar_10``, ``per_class_ap``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    task = task_of(model)
    if task not in TASKS:
        raise ValueError(f"{type(model).__name__} is a classifier: evaluate it with vitlab.train.evaluate")
    was_training = model.training
    model.eval()
    criterion = SetCriterion(model.config.num_classes).to(device) if task == "detect" else None
    classes = model.config.num_classes
    metrics = SegmentationMetrics(classes) if task == "segment" else DetectionMetrics(classes)
    loss_sum, n = 0.0, 0
    autocast = autocast_context(device, precision)  # resolved once, not per batch
    for images, masks, boxes, labels in canvas_batches(dataset, batch_size, device=device):
        with autocast:
            output = model(images)
        loss, _ = _loss(model, output, masks, boxes, labels, criterion)
        loss_sum += loss.item() * len(images)
        n += len(images)
        if task == "segment":
            metrics.update(output, masks)
        else:
            size = images.shape[-1]
            metrics.update(postprocess(output, size), [{"boxes": b[lab >= 0], "labels": lab[lab >= 0]}
                                                       for b, lab in zip(boxes, labels)])
    model.train(was_training)
    return {**metrics.compute(), "loss": loss_sum / max(n, 1), "n": n}


def init_encoder(spec: str | os.PathLike[str], canvas_size: int) -> ViT:
    """A classification ViT to start a dense model's encoder from: loaded (:func:`vitlab.pretrained.load`),
    its position table resampled to ``canvas_size`` and its head removed."""
    vit = load_model(spec)
    if type(vit) is not ViT:
        raise ValueError(f"{spec} is a {type(vit).__name__}; a dense model's encoder starts from a plain ViT "
                         "(family 'vit', e.g. a vit_mnist run or a DINO backbone)")
    if vit.config.in_channels != 1:
        raise ValueError(f"{spec} takes {vit.config.in_channels}-channel images; the MNIST canvases have 1 channel")
    if canvas_size % vit.config.patch_size:
        raise ValueError(f"{spec} cuts {vit.config.patch_size}x{vit.config.patch_size} patches, which do not tile "
                         f"the {canvas_size}x{canvas_size} canvases (choose a canvas_size that is a multiple)")
    return adapt(vit, num_classes=0, image_size=canvas_size, input_size=canvas_size)


_ENCODER_FIELDS = ("image_size", "in_channels", "patch_size", "dim", "depth", "heads", "mlp_ratio", "positional",
                   "pool", "qkv_bias", "norm_eps")


def _build_model(name: str, model_args: dict[str, Any], canvas: CanvasConfig, task: str,
                 encoder: ViT | None) -> nn.Module:
    fields = {"image_size": canvas.canvas_size, "in_channels": 1, **model_args}
    if encoder is not None:
        clash = sorted(set(model_args) & set(_ENCODER_FIELDS))
        if clash:
            raise ValueError(f"with init the encoder comes from the checkpoint: drop --model-arg {', '.join(clash)}")
        fields.update({k: getattr(encoder.config, k) for k in _ENCODER_FIELDS})
    try:
        model = create_model(name, **fields)
    except (ConfigError, TypeError) as error:
        raise ValueError(f"invalid model settings for {name}: {error}") from None
    classes = len(CanvasDataset.segmentation_classes if task == "segment" else CanvasDataset.classes)
    if model.config.num_classes != classes:
        raise ValueError(f"the canvases have {classes} {task} classes, not num_classes={model.config.num_classes}")
    if task == "detect" and model.config.num_det_tokens < canvas.max_digits:
        raise ValueError(f"{model.config.num_det_tokens} detection tokens cannot find the up to {canvas.max_digits} "
                         "digits of a canvas: raise num_det_tokens (--model-arg) or lower max_digits (--canvas-arg)")
    if model.config.image_size != canvas.canvas_size:
        raise ValueError(f"{name} takes {model.config.image_size}x{model.config.image_size} images; the canvases are "
                         f"{canvas.canvas_size}x{canvas.canvas_size}")
    if encoder is not None:
        model.encoder.load_state_dict(encoder.state_dict())
    return model


def dense_model_names(task: str) -> list[str]:
    """The registered models of a dense task."""
    return [n for n in model_names() if get_model(n).task == task]


class DenseTrainer:
    """A segmentation or detection model's training state for the epoch loop."""

    progress_fields = ("train_loss", "val_loss")

    def __init__(self, task: DenseTask, device: torch.device, dist: DistContext) -> None:
        net, config = task.net, task.config
        self.task, self.net, self.config, self.device, self.dist = task.name, net, config, device, dist
        self.history_fields = HISTORY_FIELDS[task.name]
        self.train_set, self.val_set = task.train_set, task.val_set
        self.steps_per_epoch = task.steps_per_epoch(dist.world_size)
        self.optimizer = make_optimizer(net, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, schedule_factor(config, self.steps_per_epoch))
        self.criterion = SetCriterion(net.config.num_classes).to(device) if task.name == "detect" else None
        self.autocast = autocast_context(device, config.precision)
        self.step_net: nn.Module = net
        if dist.enabled:
            self.step_net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:  # weights are saved from the plain model
            self.step_net = torch.compile(self.step_net)

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        self.net.train()
        started = time.perf_counter()
        row: dict[str, Any] = {"lr": max(g["lr"] for g in self.optimizer.param_groups)}
        sums = torch.zeros(4, dtype=torch.float64)  # loss, class, box, GIoU parts, summed over steps
        batches = tqdm(canvas_batches(self.train_set, self.config.batch_size, shuffle=True, seed=self.config.seed,
                                      epoch=epoch, drop_last=True, steps=self.steps_per_epoch, device=self.device,
                                      rank=self.dist.rank, world_size=self.dist.world_size),
                       total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                       disable=not progress)
        for step, batch in enumerate(batches):
            loss, parts = dense_step(self.step_net, batch, self.optimizer, self.scheduler, self.criterion,
                                     self.config.grad_clip, self.autocast)
            sums += torch.tensor([loss, *(parts.get(k, 0.0) for k in ("loss_class", "loss_bbox", "loss_giou"))],
                                 dtype=torch.float64)
            if step % 10 == 0:
                batches.set_postfix(loss=f"{sums[0].item() / (step + 1):.4f}")
        self.dist.all_sum(sums)
        steps = self.steps_per_epoch * self.dist.world_size
        row["train_loss"] = sums[0].item() / steps
        if self.task == "detect":
            row.update(train_loss_class=sums[1].item() / steps, train_loss_bbox=sums[2].item() / steps,
                       train_loss_giou=sums[3].item() / steps)
        row["train_images_per_s"] = steps * self.config.batch_size / (time.perf_counter() - started)
        return row

    def validate(self) -> dict[str, Any]:
        # Every rank scores the whole validation set with the same weights: the same numbers on each.
        val = evaluate_dense(self.net, self.val_set, self.config.eval_batch_size, self.device, self.config.precision)
        if self.task == "segment":
            return {"val_loss": val["loss"], "val_miou": val["miou"], "val_pixel_accuracy": val["pixel_accuracy"]}
        return {"val_loss": val["loss"], "val_map": val["map"], "val_map_50": val["map_50"]}

    def set_epochs(self, epochs: int) -> bool:
        self.config, changed = change_length(self.config, self.scheduler, self.steps_per_epoch, epochs)
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "train_config": self.config.to_dict()}

    def load_state_dict(self, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
        load_modules(state, {"model": self.net, "optimizer": self.optimizer, "scheduler": self.scheduler}, source)

    def weights(self) -> nn.Module:
        return self.net


class DenseTask(Task):
    """Train a segmentation or detection model on the MNIST canvases (see the module docstring)."""

    def __init__(self, task: str, model: str | None, *, recipe_overrides: dict[str, Any] | None = None,
                 model_args: dict[str, Any] | None = None, canvas: CanvasConfig | None = None,
                 init: str | os.PathLike[str] | None = None, seed: int = 0,
                 data_root: str | os.PathLike[str] | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: choose {', '.join(TASKS)}")
        self.name, self.model_name = task, model or DEFAULT_MODELS[task]
        if get_model(self.model_name).task != task:  # before any data is loaded
            raise ValueError(f"{self.model_name} is not a {task} model; for --task {task} choose one of "
                             f"{', '.join(dense_model_names(task))}")
        overrides = {k: v for k, v in (recipe_overrides or {}).items() if v is not None}
        refused = ["--" + k.replace("_", "-") for k, v in overrides.items()
                   if k in _UNSUPPORTED and v != _UNSUPPORTED[k]]
        if refused:
            raise ValueError(f"{', '.join(refused)}: classification-only settings, not used by --task {task}")
        self.overrides, self.model_args, self.seed, self.data_root = overrides, dict(model_args or {}), seed, data_root
        self.canvas, self.init = canvas or CanvasConfig(), init
        self.config = recipe(self.model_name, **{**overrides, "seed": seed})

    def prepare(self, device: torch.device, resumed: Run | None) -> None:
        self.train_set, self.val_set, self.test_set = (load_canvas(split, self.canvas, self.data_root)
                                                       for split in ("train", "val", "test"))
        self.encoder = init_encoder(self.init, self.canvas.canvas_size) if self.init is not None else None
        seed_everything(self.seed)  # after loading the encoder: its loading path draws no numbers the model uses
        self.net = _build_model(self.model_name, self.model_args, self.canvas, self.name, self.encoder).to(device)
        self.epochs, self.precision, self.train_n = self.config.epochs, self.config.precision, len(self.train_set)
        self.input_shape = self.test_set.image_shape

    def steps_per_epoch(self, world_size: int = 1) -> int:
        steps = len(self.train_set) // world_size // self.config.batch_size
        if self.config.max_steps_per_epoch:
            steps = min(steps, self.config.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"{len(self.train_set)} training canvases are fewer than one batch of "
                             f"{self.config.batch_size}" + (f" per process ({world_size})" if world_size > 1 else ""))
        return steps

    def plan_budget(self, budget_s: float, device: torch.device) -> BudgetPlan:
        probe = copy.deepcopy(self.net)
        optimizer = make_optimizer(probe, self.config)
        criterion = SetCriterion(probe.config.num_classes).to(device) if self.name == "detect" else None
        autocast = autocast_context(device, self.config.precision)
        batches = (batch for epoch in range(8) for batch in canvas_batches(  # 8 steps, whatever the epoch's size
            self.train_set, self.config.batch_size, shuffle=True, seed=self.config.seed, epoch=epoch, drop_last=True,
            device=device))
        step_net = torch.compile(probe) if self.config.compile else probe

        def step() -> None:
            probe.train()
            dense_step(step_net, next(batches), optimizer, None, criterion, self.config.grad_clip, autocast)

        def eval_seconds(_: float) -> float:  # one validation pass, measured on up to 200 canvases
            sample = self.val_set.subset(torch.arange(min(len(self.val_set), 200)))
            started = time.perf_counter()
            evaluate_dense(probe, sample, self.config.eval_batch_size, device, self.config.precision)
            return (time.perf_counter() - started) * len(self.val_set) / len(sample)

        return plan_steps(step, self.steps_per_epoch(), budget_s, eval_seconds,
                          max_epochs=self.overrides.get("epochs"), device=device, compiled=self.config.compile)

    def record(self) -> RunConfig:
        classes = self.train_set.segmentation_classes if self.name == "segment" else self.train_set.classes
        data = DatasetRecord(name="mnist-canvas", canvas=self.canvas.to_dict(), source=self.train_set.source,
                             train_n=len(self.train_set), val_n=len(self.val_set), test_n=len(self.test_set),
                             classes=list(classes), mean=list(self.train_set.mean), std=list(self.train_set.std))
        init = None if self.encoder is None else InitRecord(
            spec=str(self.init), config=self.encoder.config.to_dict(),
            method=Run(self.init).record().method if Run(self.init).exists() else "pretrained")
        return RunConfig(task=self.name, model=ModelRecord(**model_spec(self.model_name, self.net)), dataset=data,
                         train=self.config.to_dict(), init=init)

    def trainer(self, device: torch.device, dist: DistContext, resuming: bool) -> Trainer:
        return DenseTrainer(self, device, dist)

    def test(self, trainer: Trainer, history: list[dict[str, Any]], dist: DistContext) -> dict[str, Any]:
        device = next(self.net.parameters()).device
        result = evaluate_dense(self.net, self.test_set, self.config.eval_batch_size, device, self.config.precision)
        return {**_test_metrics(result, self.name, self.test_set), **({"init": str(self.init)} if self.init else {})}

    def figures(self, run: Run, trainer: Trainer, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        _write_figures(run, self.net, history, self.test_set, self.name, f"{self.model_name} on mnist-canvas")

    def header(self) -> str:
        start = f" from {self.init}" if self.init else ""
        precision = describe_precision(self.config.precision, next(self.net.parameters()).device)
        return (f"{self.name}: training {self.model_name} ({count_parameters(self.net):,} parameters){start} on "
                f"mnist-canvas: {len(self.train_set):,} train / {len(self.val_set):,} val / {len(self.test_set):,} "
                f"test canvases, precision {precision}")

    def headline(self, metrics: dict[str, Any]) -> str:
        if self.name == "segment":
            return (f"test mIoU {100 * metrics['test_miou']:.2f}% (digits only "
                    f"{100 * metrics['test_miou_objects']:.2f}%) on {metrics['test_n']:,} test canvases")
        return (f"test mAP@[.5:.95] {100 * metrics['test_map']:.2f}%, mAP@0.5 {100 * metrics['test_map_50']:.2f}% on "
                f"{metrics['test_n']:,} test canvases")


def dense_run(task: Task_, model: str | None, out: str | os.PathLike[str], *, recipe: dict[str, Any] | None = None,
              model_args: dict[str, Any] | None = None, canvas: CanvasConfig | None = None,
              init: str | os.PathLike[str] | None = None, seed: int = 0,
              data_root: str | os.PathLike[str] | None = None, resume: bool = False, time_budget: float | None = None,
              device: str | torch.device | None = None, progress: bool = True, verbose: bool = True,
              command: str | None = None, experiment: str | None = None) -> Run:
    """Train a segmentation or detection model on the MNIST canvases, evaluate it on the test canvases,
    write the run folder and return its :class:`~vitlab.runfolder.Run` (through :func:`vitlab.engine.driver.drive`).

    ``model``: a registered model of the task (default :data:`DEFAULT_MODELS`); ``model_args`` replace
    fields of its preset; ``recipe``: :class:`~vitlab.engine.recipe.TrainConfig` fields over the model's tuned
    recipe (augmentation, label smoothing, freezing, layer decay and distillation are classification-only
    and refused). ``canvas``: how the canvases are drawn (:class:`~vitlab.data.canvas.CanvasConfig`).
    ``init``: start the encoder from a classification ViT (:func:`init_encoder`). ``resume`` continues
    from the last finished epoch; without it, an existing run is an error. ``time_budget`` (seconds) plans
    the number of epochs from a measured step, as for classification.
    """
    dense = DenseTask(task, model, recipe_overrides=recipe, model_args=model_args, canvas=canvas, init=init, seed=seed,
                      data_root=data_root)
    return drive(dense, out, resume=resume, time_budget=time_budget, device=device, progress=progress,
                 verbose=verbose, command=command, experiment=experiment)



def _test_metrics(result: dict[str, Any], task: str, dataset: CanvasDataset, prefix: str = "test") -> dict[str, Any]:
    """A :func:`evaluate_dense` result as ``metrics.json`` keys."""
    out: dict[str, Any] = {f"{prefix}_loss": result["loss"], f"{prefix}_n": result["n"]}
    if task == "segment":
        out.update({f"{prefix}_miou": result["miou"], f"{prefix}_miou_objects": result["miou_objects"],
                    f"{prefix}_pixel_accuracy": result["pixel_accuracy"]})
        if prefix == "test":
            out["per_class_iou"] = dict(zip(dataset.segmentation_classes, result["per_class_iou"]))
    else:
        out.update({f"{prefix}_map": result["map"], f"{prefix}_map_50": result["map_50"],
                    f"{prefix}_map_75": result["map_75"], f"{prefix}_mar_10": result["mar_10"]})
        if prefix == "test":
            out["per_class_ap"] = dict(zip(dataset.classes, result["per_class_ap"]))
    return out


def _write_figures(run: Run, model: nn.Module, history: list[dict[str, Any]], test_set: CanvasDataset, task: str,
                   title: str) -> None:
    """``curves.png`` (loss and mIoU / mAP per epoch) and ``predictions.png`` (the first test canvases)."""
    figures = {"predictions.png": plot_predictions(model, test_set, range(min(6, len(test_set))), title=title)}
    if history:
        scores = [("val_miou", "validation mIoU")] if task == "segment" else \
            [("val_map_50", "validation mAP@0.5"), ("val_map", "validation mAP@[.5:.95]")]
        figures["curves.png"] = plot_history(history, title, scores=scores,
                                             score_name="mIoU" if task == "segment" else "mAP")
    for name, fig in figures.items():
        atomic_write(run.path / name, lambda tmp, fig=fig: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)


def evaluate_dense_run(run: Run, split: str = "test", batch_size: int = 500, device: str | None = None,
                       data_root: str | os.PathLike[str] | None = None, write: bool = True,
                       precision: str | None = None) -> dict[str, Any]:
    """``vitlab evaluate`` for a dense run: its model on its own canvases' ``split`` (in ``precision``; default
    :meth:`Run.evaluation_precision`); the result is merged into ``metrics.json`` (under ``test_*``
    or ``val_*``/``train_*`` keys) of a finished run unless ``write=False``."""
    config = run.config()
    task = config.get("task")
    if task not in TASKS:
        raise RunError(f"{run.path} is not a segmentation or detection run")
    try:
        canvas = CanvasConfig.from_dict(config["dataset"]["canvas"])
    except (KeyError, ConfigError) as error:
        raise RunError(f"{run.path}/config.json has no valid canvas settings: {error}") from None
    target = pick_device(device)
    dataset = load_canvas(split, canvas, data_root)
    result = evaluate_dense(run.model(map_location=target), dataset, batch_size, target,
                            precision=precision or run.evaluation_precision())
    if write and run.is_finished():  # an unfinished run has no metrics.json to add to (resume it first)
        metrics = run.metrics()
        metrics.update(_test_metrics(result, task, dataset, split))
        metrics["evaluated_with"] = command_line()
        run.write_metrics(metrics)
    return result


# ----------------------------------------------------------------------------- pictures

_COLORS = ["#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
           "#bcf60c", "#fabebe"]  # background black, then one color per digit


def plot_predictions(model: nn.Module, dataset: CanvasDataset, indices: Sequence[int] | range,
                     score_threshold: float = 0.5, title: str | None = None) -> Any:
    """Predictions on canvases ``indices``: segmentation as true vs predicted masks (one color per digit),
    detection as predicted boxes (solid, with digit and score >= ``score_threshold``) over the true
    ones (dashed). Returns the matplotlib figure."""
    indices = list(indices)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model(dataset.normalized(torch.tensor(indices)).to(device))
    model.train(was_training)
    task = task_of(model)
    cols = len(indices)
    if task == "segment":
        cmap = ListedColormap(_COLORS)
        predicted = output.argmax(1).cpu()
        fig, axes = plt.subplots(3, cols, figsize=(1.9 * cols, 6.2), squeeze=False)
        for j, i in enumerate(indices):
            axes[0, j].imshow(dataset.images[i, 0].numpy(), cmap="gray")
            axes[1, j].imshow(dataset.masks[i].numpy(), cmap=cmap, vmin=0, vmax=10, interpolation="nearest")
            axes[2, j].imshow(predicted[j].numpy(), cmap=cmap, vmin=0, vmax=10, interpolation="nearest")
        for row, label in enumerate(("canvas", "true mask", "predicted")):
            axes[row, 0].set_ylabel(label)
        fig.legend(handles=[Patch(color=_COLORS[k + 1], label=str(k)) for k in range(10)], loc="lower center",
                   ncol=10, title="digit", fontsize=8)
        fig.subplots_adjust(bottom=0.14)
    else:
        found = postprocess(output, dataset.config.canvas_size, score_threshold)
        fig, axes = plt.subplots(1, cols, figsize=(2.2 * cols, 2.8), squeeze=False)
        for j, i in enumerate(indices):
            ax = axes[0, j]
            ax.imshow(dataset.images[i, 0].numpy(), cmap="gray")
            truth = dataset.targets(i)
            for box in truth["boxes"]:
                x1, y1, x2, y2 = box.tolist()
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="white", ls="--",
                                       lw=1))
            for box, score, label in zip(found[j]["boxes"], found[j]["scores"], found[j]["labels"]):
                x1, y1, x2, y2 = box.tolist()
                color = _COLORS[int(label) + 1]
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=color, lw=1.5))
                ax.text(x1, y1 - 1, f"{int(label)} {score:.2f}", color=color, fontsize=7, va="bottom")
            ax.set_title("true: " + " ".join(str(int(v)) for v in truth["labels"]), fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title + ("" if task == "segment" else f" (dashed: true boxes; score >= {score_threshold})"),
                     fontsize=9)
    if task != "segment":
        fig.tight_layout()
    return fig

