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

import os
import platform
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .canvas import CanvasConfig, CanvasDataset, canvas_batches, load_canvas
from .checkpoint import atomic_write, unwrap
from .configs import ConfigError
from .detection import DetectionMetrics, DetectionOutput, SetCriterion, postprocess, targets_from_canvas
from .model import ViT, count_parameters
from .precision import describe_precision
from .runs import Run, RunError, check_resume_recipe, command_line, count_flops, device_name, model_spec
from .segmentation import SegmentationMetrics, segmentation_loss
from .train import optimizer_step, restore_training_state, training_state

__all__ = ["TASKS", "DEFAULT_MODELS", "task_of", "dense_step", "evaluate_dense", "dense_run", "evaluate_dense_run",
           "plot_predictions", "init_encoder", "HISTORY_FIELDS"]

Task = Literal["segment", "detect"]
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
                "distill": "none"}


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
    from .precision import autocast_context

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
    from .pretrained import adapt, load

    vit = load(str(spec))
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
    from .registry import create_model

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
    from .registry import get_model, model_names

    return [n for n in model_names() if get_model(n).task == task]


def dense_run(task: Task, model: str | None, out: str | os.PathLike[str], *, recipe: dict[str, Any] | None = None,
              model_args: dict[str, Any] | None = None, canvas: CanvasConfig | None = None,
              init: str | os.PathLike[str] | None = None, seed: int = 0,
              data_root: str | os.PathLike[str] | None = None, resume: bool = False,
              device: str | torch.device | None = None, progress: bool = True, verbose: bool = True,
              command: str | None = None, experiment: str | None = None) -> Run:
    """Train a segmentation or detection model on the MNIST canvases, evaluate it on the test canvases,
    write the run folder and return its :class:`~vitlab.runs.Run`.

    ``model``: a registered model of the task (default :data:`DEFAULT_MODELS`); ``model_args`` replace
    fields of its preset; ``recipe``: :class:`~vitlab.train.TrainConfig` fields over the model's tuned
    recipe (augmentation, label smoothing, freezing, layer decay and distillation are classification-only
    and refused). ``canvas``: how the canvases are drawn (:class:`~vitlab.canvas.CanvasConfig`).
    ``init``: start the encoder from a classification ViT (:func:`init_encoder`). ``resume`` continues
    from the last finished epoch; without it, an existing run is an error.
    """
    from .precision import autocast_context
    from .registry import get_model
    from .runtime import pick_device, seed_everything
    from .train import make_optimizer, warmup_cosine
    from .train import recipe as tuned_recipe

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose {', '.join(TASKS)}")
    run = Run(out)
    device = pick_device(None if device is None else str(device))
    command = command or command_line()
    canvas = canvas or CanvasConfig()
    if not resume and run.has_state():
        raise RunError(f"{run.path} already holds a run: pass --resume (resume=True) to continue it, "
                       "or choose another output folder")
    model = model or DEFAULT_MODELS[task]
    if get_model(model).task != task:  # before any data is loaded
        raise ValueError(f"{model} is not a {task} model; for --task {task} choose one of "
                         f"{', '.join(dense_model_names(task))}")
    overrides = {k: v for k, v in (recipe or {}).items() if v is not None}
    refused = ["--" + k.replace("_", "-") for k, v in overrides.items() if k in _UNSUPPORTED and v != _UNSUPPORTED[k]]
    if refused:
        raise ValueError(f"{', '.join(refused)}: classification-only settings, not used by --task {task}")
    config = tuned_recipe(model, **{**overrides, "seed": seed})

    train_set = load_canvas("train", canvas, data_root)
    val_set = load_canvas("val", canvas, data_root)
    test_set = load_canvas("test", canvas, data_root)
    seed_everything(seed)
    encoder = init_encoder(init, canvas.canvas_size) if init is not None else None
    net = _build_model(model, dict(model_args or {}), canvas, task, encoder).to(device)
    run_config = {
        "task": task,
        "model": model_spec(model, net),
        "train": config.to_dict(),
        "dataset": {"name": "mnist-canvas", "canvas": canvas.to_dict(), "source": train_set.source,
                    "train_n": len(train_set), "val_n": len(val_set), "test_n": len(test_set),
                    "classes": list(train_set.segmentation_classes if task == "segment" else train_set.classes),
                    "mean": list(train_set.mean), "std": list(train_set.std)},
        **({"init": {"spec": str(init), "config": encoder.config.to_dict()}} if encoder is not None else {}),
        **({"experiment": experiment} if experiment else {}),
    }
    if resume and run.exists():
        saved = run.config()
        # The dataset's source says where the canvases came from this time (built, or read from the cache):
        # provenance, not a setting, so it may differ on resume.
        saved["dataset"] = {k: v for k, v in saved.get("dataset", {}).items() if k != "source"}
        compared = {**run_config, "dataset": {k: v for k, v in run_config["dataset"].items() if k != "source"}}
        check_resume_recipe(run, saved, config)
        for key in ("task", "model", "init", "dataset"):
            if saved.get(key) != compared.get(key):
                raise RunError(f"cannot resume {run.path}: its {key} settings differ from this command's "
                               f"(saved {saved.get(key)} vs now {run_config.get(key)})")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config({**run_config, "command": command})
    params = count_parameters(net)
    if verbose:
        print(f"{task}: training {model} ({params:,} parameters){' from ' + str(init) if init else ''} on "
              f"mnist-canvas: {len(train_set):,} train / {len(val_set):,} val / {len(test_set):,} test canvases, "
              f"device {device}", flush=True)

    steps_per_epoch = len(train_set) // config.batch_size
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training canvases are fewer than one batch of {config.batch_size}")
    optimizer = make_optimizer(net, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch), config.min_lr / config.lr))
    criterion = SetCriterion(net.config.num_classes).to(device) if task == "detect" else None
    autocast = autocast_context(device, config.precision)
    step_net = torch.compile(net) if config.compile else net  # weights are saved from the plain model
    start_epoch, history = 0, []
    if resume and run.has_state():
        start_epoch, history = restore_training_state(run.load_state(map_location=device), net, optimizer,
                                                      scheduler, device, run.state_path)
    score = "val_miou" if task == "segment" else "val_map_50"
    started = time.perf_counter()
    for epoch in tqdm(range(start_epoch, config.epochs), desc="epochs", disable=not progress, initial=start_epoch,
                      total=config.epochs):
        net.train()
        epoch_started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": max(g["lr"] for g in optimizer.param_groups)}
        sums: dict[str, float] = {}
        batches = tqdm(canvas_batches(train_set, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                                      drop_last=True, steps=steps_per_epoch, device=device),
                       total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                       disable=not progress)
        for step, batch in enumerate(batches):
            loss, parts = dense_step(step_net, batch, optimizer, scheduler, criterion, config.grad_clip, autocast)
            for key, value in {"train_loss": loss, **{f"train_{k}": v for k, v in parts.items()}}.items():
                sums[key] = sums.get(key, 0.0) + value
            if step % 10 == 0:
                batches.set_postfix(loss=f"{sums['train_loss'] / (step + 1):.4f}")
        train_s = time.perf_counter() - epoch_started
        row.update({k: v / steps_per_epoch for k, v in sums.items()})
        row["train_images_per_s"] = steps_per_epoch * config.batch_size / train_s
        val = evaluate_dense(net, val_set, config.eval_batch_size, device, config.precision)
        row["val_loss"] = val["loss"]
        if task == "segment":
            row.update(val_miou=val["miou"], val_pixel_accuracy=val["pixel_accuracy"])
        else:
            row.update(val_map=val["map"], val_map_50=val["map_50"])
        row["epoch_time_s"] = time.perf_counter() - epoch_started
        history.append(row)
        if verbose and not progress:
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, val loss "
                  f"{row['val_loss']:.4f}, {score} {row[score]:.4f}", flush=True)
        run.save_weights(net)
        run.save_state(training_state(epoch + 1, net, optimizer, scheduler, history, config, device))
        run.write_history(history, HISTORY_FIELDS[task])
    train_time = sum(row["epoch_time_s"] for row in history)
    result = evaluate_dense(net, test_set, config.eval_batch_size, device, config.precision)
    metrics = {
        "task": task, **_test_metrics(result, task, test_set),
        "epochs": len(history), "params": params, "flops": count_flops(net, test_set.image_shape),
        "train_time_s": round(train_time, 2), "wall_time_s": round(time.perf_counter() - started, 2),
        "device": device_name(device), "precision": describe_precision(config.precision, device),
        "torch": torch.__version__, "python": platform.python_version(),
        "seed": seed, "model": model, "dataset": "mnist-canvas", "command": command, "train_n": len(train_set),
        "recipe": config.to_dict(), **({"init": str(init)} if init is not None else {}),
    }
    run.write_metrics(metrics)
    _write_figures(run, net, history, test_set, task, f"{model} on mnist-canvas")
    if verbose:
        if task == "segment":
            headline = (f"test mIoU {100 * metrics['test_miou']:.2f}% (digits only "
                        f"{100 * metrics['test_miou_objects']:.2f}%)")
        else:
            headline = (f"test mAP@[.5:.95] {100 * metrics['test_map']:.2f}%, mAP@0.5 "
                        f"{100 * metrics['test_map_50']:.2f}%")
        print(f"{headline} on {len(test_set):,} test canvases (train time {train_time:.0f} s)\nrun saved in {run.path}")
    return run


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
    import matplotlib.pyplot as plt

    from .plots import plot_history

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
    from .runtime import pick_device

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
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

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

