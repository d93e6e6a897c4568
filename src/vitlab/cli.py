"""Command line: ``python -m vitlab {train,pretrain,evaluate,explain,robustness,report,download}`` (also the ``vitlab``
script).

Modelled on torchvision's reference scripts: every knob is an explicit flag. This module only
parses arguments and calls the library: ``train`` is :func:`vitlab.engine.classify.train_run` (or, for
``--task segment|detect``, :func:`vitlab.engine.dense.dense_run`) and ``pretrain`` is
:func:`vitlab.engine.dino.pretrain`, all three through the one run driver
(:func:`vitlab.engine.driver.drive`), which writes a self-describing run folder; ``evaluate``, ``explain`` and
``robustness`` (:func:`vitlab.analysis.robustness.evaluate_robustness`) read one back through
:class:`vitlab.runfolder.Run`. The recipe flags are generated from the
fields of :class:`~vitlab.engine.recipe.TrainConfig` and :class:`~vitlab.engine.dino.DinoConfig`, and
``--model`` takes the names in :mod:`vitlab.models.registry`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import typing
from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import torch

from .analysis.explain import explanations
from .analysis.plots import plot_explanations
from .analysis.report import build_report
from .analysis.robustness import (
    SEVERITIES,
    TESTS,
    check_severities,
    check_tests,
    evaluate_robustness,
    format_table,
    seeded_subset,
)
from .core.configs import literal_choices
from .core.io import CheckpointError, atomic_write, save_json
from .core.runtime import pick_device
from .data.augment import AUGMENTATIONS
from .data.canvas import CanvasConfig
from .data.datasets import RESIZE_MODES, DatasetNotFoundError, data_root, load_dataset
from .engine.classify import train_run
from .engine.dense import dense_run, evaluate_dense_run
from .engine.dino import DinoConfig, pretrain
from .engine.loop import leave_process_group
from .engine.recipe import TrainConfig
from .engine.train import evaluate
from .models.registry import describe_models, get_model, model_names
from .runfolder.run import Run, command_line

__all__ = ["main", "build_parser"]

#: ``vitlab robustness``: the file it writes into the run folder, and its default sample of test images.
ROBUSTNESS_FILE = "robustness.json"
DEFAULT_ROBUSTNESS_IMAGES = 500


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_overrides(pairs: Sequence[str], flag: str = "--model-arg") -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    return overrides


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults, except the empty ones (None, False, []); keep the model list's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []):
            return action.help or ""
        return super()._get_help_string(action)


def _add_config_flags(group: argparse._ArgumentGroup, config_class: type, unset: str) -> None:
    """One flag per field of a config dataclass (``lr`` -> ``--lr``; ``seed`` is a top-level flag), with
    the help text in the field's metadata. Every flag defaults to "unset" (``None``), so the recipe
    ``unset`` names applies; ``tuple[float, float]`` fields take two numbers."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.name == "seed":
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata.get('help', '')} ({unset}, else {field.default})"
        annotation = hints[field.name]
        options = [t for t in (typing.get_args(annotation) or (annotation,)) if t is not type(None)]
        if bool in options:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        if typing.get_origin(annotation) is tuple:
            group.add_argument(flag, type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help=help_text)
            continue
        choices = literal_choices(annotation)
        if field.name == "augment":
            choices = tuple(AUGMENTATIONS)
        if choices is not None:
            base: Any = type(next(c for c in choices if c is not None))
        else:  # int, float, str, or one of them | None
            base = options[0]
        group.add_argument(flag, type=base, default=None, help=help_text,
                           choices=[c for c in choices if c is not None] if choices else None)


def _config_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    return {name: getattr(args, name) for name in config_class.field_names() if name != "seed"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlab", description="Train, evaluate and inspect Vision Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and evaluate it on the test set",
                           formatter_class=_HelpFormatter, epilog="registered models:\n" + describe_models())
    train.add_argument("--task", default=None, choices=["classify", "segment", "detect"],
                       help="classify (default), or segment / detect the digits on MNIST canvases (vitlab.dense; "
                            "default model segmenter_linear_canvas / yolos_canvas); a dense --model implies its task")
    train.add_argument("--model", default=None, choices=model_names(), metavar="MODEL",
                       help="a registered model (listed below; default vit_mnist), or none with --init")
    train.add_argument("--init", default=None, metavar="SPEC",
                       help="fine-tune a pretrained model: a run folder, a weights file (.safetensors, .pth, .bin), "
                            "timm:NAME, torchvision:NAME or hf:REPO_ID (a new head is attached for the dataset); "
                            "with --task segment|detect: a 1-channel plain ViT whose encoder starts the model")
    train.add_argument("--image-size", type=int, default=None,
                       help="with --init: the resolution the model runs at (its position table is resampled); "
                            "default the checkpoint's. Images of another size are resized to it")
    train.add_argument("--resize", default="crop", choices=list(RESIZE_MODES),
                       help="folder:PATH datasets: how a picture of another shape becomes square (centre crop, "
                            "squash, or pad with black; vitlab.data.fit_image)")
    train.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=True,
                       help="folder:PATH datasets: keep each class's share in the test and validation splits")
    train.add_argument("--classes", default=None, metavar="A,B,...",
                       help="train on these classes only (names or indices, comma-separated), relabelled in order")
    train.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model config field, e.g. --model-arg patch_size=7 (repeatable)")
    train.add_argument("--dataset", default=None,
                       help="mnist (default), fashion-mnist, cifar10, cifar10-subset, cifar100 or folder:PATH; "
                            "mnist-canvas for --task segment|detect")
    train.add_argument("--canvas-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="--task segment|detect: a vitlab.canvas.CanvasConfig field, e.g. --canvas-arg "
                            "train_size=5000 (repeatable)")
    train.add_argument("--data-root", default=None, help="dataset folder ($VITLAB_DATA, else ./data)")
    _add_config_flags(train.add_argument_group(
        "training recipe (unset flags take the model's tuned recipe, see vitlab.registry, else the value shown)"),
        TrainConfig, "recipe's")
    train.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help="fit the number of epochs to this wall-clock budget (measured on this machine: a few "
                            "steps, then the first epoch, whose time re-plans the rest where the first epoch was "
                            "all warm-up); an explicit --epochs becomes the most it may run")
    train.add_argument("--val-size", type=float, default=0.1,
                       help="validation share of the training set (a fraction, or a count if >= 1)")
    train.add_argument("--subset", type=int, default=None, help="train on a seeded random subset of N images")
    train.add_argument("--test-subset", type=int, default=None, help="evaluate on a seeded subset of N test images")
    train.add_argument("--label-noise", type=float, default=0.0, metavar="FRACTION",
                       help="give this fraction of the training images a wrong label, chosen by --seed (validation "
                            "and test keep the true labels): a badly annotated set, e.g. for distillation")
    train.add_argument("--seed", type=int, default=0, help="fixes initialization, data order and splits")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--experiment", default=None, metavar="NAME",
                       help="tag the run as part of an experiment (the report gives each experiment its section)")

    pretrain = sub.add_parser("pretrain", help="self-supervised pretraining without labels (DINO)",
                              formatter_class=_HelpFormatter,
                              epilog="the run folder's backbone is fine-tuned with: vitlab train --init RUN ...")
    pretrain.add_argument("--method", default="dino", choices=["dino"], help="the self-supervised method")
    pretrain.add_argument("--model", default="vit_mnist", choices=[n for n in model_names() if n.startswith("vit_")
                                                                   and not n.endswith("_exits")],
                          help="the ViT to pretrain")
    pretrain.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                          help="override a model config field (repeatable)")
    pretrain.add_argument("--dataset", default="mnist", help="as for train (its labels are not used)")
    pretrain.add_argument("--data-root", default=None, help="dataset folder ($VITLAB_DATA, else ./data)")
    _add_config_flags(pretrain.add_argument_group("DINO recipe (vitlab.dino.DinoConfig)"), DinoConfig, "unset")
    pretrain.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                          help="fit the number of epochs to this budget (measured); --epochs is then the most")
    pretrain.add_argument("--subset", type=int, default=None, help="pretrain on a seeded random subset of N images")
    pretrain.add_argument("--val-size", type=float, default=0.1, help="validation share (for the k-NN monitor)")
    pretrain.add_argument("--seed", type=int, default=0, help="fixes initialization, crops, data order and splits")
    pretrain.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    pretrain.add_argument("--out", required=True, help="run folder to write")
    pretrain.add_argument("--resume", action="store_true", help="continue the run in --out")
    pretrain.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrain.add_argument("--experiment", default=None, metavar="NAME", help="tag the run as part of an experiment")

    evaluate = sub.add_parser("evaluate", help="evaluate a run folder's model on a dataset split",
                              formatter_class=_HelpFormatter)
    evaluate.add_argument("run", help="run folder (config.json + model.safetensors)")
    evaluate.add_argument("--dataset", default=None, help="dataset (default: the one the run was trained on)")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train"])
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--subset", type=int, default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--batch-size", type=int, default=1000)
    evaluate.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                          help="numeric precision (vitlab.precision); default: fp32 for a run that trained in "
                               "fp32, else auto")
    evaluate.add_argument("--no-write", action="store_true", help="print only; do not update metrics.json")

    explain = sub.add_parser("explain", help="draw attention maps, attention rollout or Grad-CAM for test images",
                             formatter_class=_HelpFormatter)
    explain.add_argument("run", help="run folder (config.json + model.safetensors)")
    explain.add_argument("--images", default="0,1,2,3", help="comma-separated indices into the split")
    explain.add_argument("--method", default="rollout", help="rollout, gradcam, attention, or several: rollout,gradcam")
    explain.add_argument("--layer", type=int, default=-1, help="block for attention / Grad-CAM (ViT)")
    explain.add_argument("--head", type=int, default=None, help="attention head (default: mean over heads)")
    explain.add_argument("--discard-ratio", type=float, default=0.0, help="rollout: drop the weakest attention")
    explain.add_argument("--dataset", default=None, help="dataset (default: the run's)")
    explain.add_argument("--split", default="test", choices=["test", "val", "train"])
    explain.add_argument("--data-root", default=None)
    explain.add_argument("--out", required=True, help="PNG file to write")

    robustness = sub.add_parser("robustness", formatter_class=_HelpFormatter,
                                help="measure a classifier's robustness: occlusion, patch shuffling, corruptions, "
                                     "adversarial attacks, translation (writes RUN/robustness.json)")
    robustness.add_argument("run", help="a classification run folder (config.json + model.safetensors)")
    robustness.add_argument("--tests", default=",".join(TESTS), metavar="A,B,...",
                            help=f"comma-separated, from: {', '.join(TESTS)}")
    robustness.add_argument("--severity", type=int, nargs="+", default=list(SEVERITIES), metavar="S",
                            help="corruption severities, 1-5 (Hendrycks & Dietterich's scale)")
    robustness.add_argument("--images", type=int, default=DEFAULT_ROBUSTNESS_IMAGES,
                            help="a seeded sample of N test images (0: the whole test split); the default keeps a "
                                 "CIFAR-10 ViT to a few minutes on a 2-core CPU")
    robustness.add_argument("--batch-size", type=int, default=250)
    robustness.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    robustness.add_argument("--seed", type=int, default=0,
                            help="picks the images and draws every random damage (the same for every model)")
    robustness.add_argument("--data-root", default=None, help="dataset folder ($VITLAB_DATA, else ./data)")
    robustness.add_argument("--quiet", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="build reports/REPORT.md and REPORT.html from run folders",
                            formatter_class=_HelpFormatter)
    report.add_argument("runs", nargs="+", help="run folders (each with config.json, metrics.json, history.csv)")
    report.add_argument("--out", default="reports", help="report folder")
    report.add_argument("--title", default="vitlab results")

    download = sub.add_parser("download", help="download a dataset with torchvision")
    download.add_argument("dataset", help="mnist, fashion-mnist, cifar10, cifar100")
    download.add_argument("--root", default=None, help="where to put it (default: $VITLAB_DATA, else ./data)")
    return parser


def _print_table(metrics: dict[str, Any], classes: Sequence[str]) -> None:
    print(f"{'class':>14}  {'accuracy':>9}  {'n':>6}")
    for name, acc, row in zip(classes, metrics["per_class_accuracy"], metrics["confusion"]):
        print(f"{name:>14}  {100 * acc:8.2f}%  {sum(row):6d}")
    print(f"{'overall':>14}  {100 * metrics['accuracy']:8.2f}%  {metrics['n']:6d}")


def cmd_train(args: argparse.Namespace) -> int:
    task = _task(args)
    finished = False
    try:
        if task == "classify":
            _train_classifier(args)
        else:
            _train_dense(args, task)
        finished = True
    except KeyboardInterrupt:
        # Under torchrun every process gets the signal: say it once.
        return _interrupted(args.out) if os.environ.get("RANK", "0") == "0" else 130
    finally:
        # Wait for the other ranks only after a clean finish: after an error or Ctrl-C some never arrive.
        leave_process_group(wait=finished)
    return 0


def _train_classifier(args: argparse.Namespace) -> None:
    if args.canvas_arg:
        raise ValueError("--canvas-arg is for --task segment|detect")
    args.dataset = args.dataset or "mnist"
    if args.val_size < 0:
        raise ValueError(f"--val-size must be a fraction in [0, 1) or a count, got {args.val_size}")
    if not args.dataset.startswith("folder:") and (args.resize != "crop" or not args.stratify):
        raise ValueError("--resize and --no-stratify are for folder:PATH datasets (a named dataset has one image size "
                         "and its own split)")
    model = args.model if args.model is not None or args.init is not None else "vit_mnist"
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    train_run(model, args.dataset, args.out, recipe=_config_overrides(args, TrainConfig),
              model_args=_model_overrides(args.model_arg), seed=args.seed, data_root=args.data_root,
              val_size=int(args.val_size) if args.val_size >= 1 else args.val_size, subset=args.subset,
              test_subset=args.test_subset, classes=classes, init=args.init, image_size=args.image_size,
              time_budget=args.time_budget, resume=args.resume, device=args.device, progress=not args.quiet,
              experiment=args.experiment, resize=args.resize, stratify=args.stratify, label_noise=args.label_noise)


def _task(args: argparse.Namespace) -> str:
    """--task, or the task of --model when it is a dense model; refuses a model of another task."""
    model_task = get_model(args.model).task if args.model else None
    task = args.task or model_task or ("segment" if args.dataset == "mnist-canvas" else "classify")
    if model_task is not None and model_task != task:
        raise ValueError(f"--model {args.model} is a {model_task} model, not a {task} one (--task {task})")
    if task == "classify" and args.dataset == "mnist-canvas":
        raise ValueError("mnist-canvas has masks and boxes, not one label per image: train on it with "
                         "--task segment or --task detect")
    return task


def _interrupted(out: str) -> int:
    print(f"\ninterrupted: the last finished epoch (if any) is saved in {out}; continue with the same command "
          "plus --resume", file=sys.stderr)
    return 130


def _train_dense(args: argparse.Namespace, task: str) -> None:
    if args.dataset not in (None, "mnist-canvas"):
        raise ValueError(f"--task {task} trains on the MNIST canvases (--dataset mnist-canvas), not {args.dataset}")
    for flag, value, default in (("--classes", args.classes, None),
                                 ("--subset", args.subset, None), ("--test-subset", args.test_subset, None),
                                 ("--label-noise", args.label_noise, 0.0),
                                 ("--image-size", args.image_size, None), ("--val-size", args.val_size, 0.1)):
        if value != default:
            raise ValueError(f"{flag} is for classification; with --task {task} set the canvases with --canvas-arg "
                             "(e.g. train_size=5000, canvas_size=...) and the length with --epochs")
    # The canvases have their own seed (--canvas-arg seed=N): runs with different --seed are scored on
    # the same test canvases, as classification runs are on the same test images.
    canvas = CanvasConfig.from_dict(_model_overrides(args.canvas_arg, "--canvas-arg"))
    dense_run(task, args.model, args.out, recipe=_config_overrides(args, TrainConfig),
              model_args=_model_overrides(args.model_arg), canvas=canvas, init=args.init, seed=args.seed,
              data_root=args.data_root, resume=args.resume, time_budget=args.time_budget, device=args.device,
              progress=not args.quiet, experiment=args.experiment)


def cmd_pretrain(args: argparse.Namespace) -> int:
    if args.val_size < 0:
        raise ValueError(f"--val-size must be a fraction in [0, 1) or a count, got {args.val_size}")
    overrides = {k: v for k, v in _config_overrides(args, DinoConfig).items() if v is not None}
    config = DinoConfig.from_dict({**overrides, "seed": args.seed})
    try:
        pretrain(args.model, args.dataset, args.out, config, model_args=_model_overrides(args.model_arg),
                 data_root=args.data_root, subset=args.subset,
                 val_size=int(args.val_size) if args.val_size >= 1 else args.val_size, time_budget=args.time_budget,
                 resume=args.resume, device=args.device, progress=not args.quiet, experiment=args.experiment,
                 method=args.method)
    except KeyboardInterrupt:
        return _interrupted(args.out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = Run(args.run)
    record = run.record()
    if record.task in ("segment", "detect"):
        return _evaluate_dense(args, run)
    if record.is_feature_extractor:
        kind = f"a {record.method} backbone" if record.method != "supervised" else "a backbone"
        raise ValueError(f"{run.path} holds a feature extractor ({kind} without a classifier): its k-NN and "
                         "linear-probe accuracies are in its metrics.json; to classify, fine-tune it first: "
                         f"vitlab train --init {run.path} --dataset ...")
    model = run.model(map_location=pick_device(args.device))
    dataset = run.dataset(args.split, name=args.dataset, root=args.data_root, subset=args.subset)
    started = time.perf_counter()
    result = evaluate(model, dataset, args.batch_size, precision=args.precision or run.evaluation_precision())
    elapsed = time.perf_counter() - started
    _print_table(result, dataset.classes)
    print(f"{args.split} accuracy of {run.path}: {100 * result['accuracy']:.2f}% ({result['n']:,} images, "
          f"{elapsed:.1f} s)")
    if args.no_write:
        return 0
    if not run.is_finished():
        print(f"not writing {run.path / Run.METRICS}: the run has not finished training (resume it first)")
        return 0
    run.record_evaluation(result, dataset)
    print(f"updated {run.path / Run.METRICS}")
    return 0


def _evaluate_dense(args: argparse.Namespace, run: Any) -> int:
    config = run.config()
    if args.dataset not in (None, "mnist-canvas") or args.subset is not None:
        raise ValueError(f"{run.path} is a {config['task']} run: it is evaluated on its own canvases "
                         "(no --dataset or --subset)")
    write = not args.no_write and run.is_finished()
    started = time.perf_counter()
    result = evaluate_dense_run(run, args.split, args.batch_size, args.device, args.data_root, write=write,
                                precision=args.precision)
    elapsed = time.perf_counter() - started
    if config["task"] == "segment":
        classes = config["dataset"]["classes"]
        print(f"{'class':>12}  {'IoU':>7}")
        for name, iou in zip(classes, result["per_class_iou"]):
            print(f"{name:>12}  {100 * iou:6.2f}%")
        print(f"{args.split} mIoU of {run.path}: {100 * result['miou']:.2f}% (digits only "
              f"{100 * result['miou_objects']:.2f}%), pixel accuracy {100 * result['pixel_accuracy']:.2f}% "
              f"({result['n']:,} canvases, {elapsed:.1f} s)")
    else:
        print(f"{'digit':>6}  {'AP@[.5:.95]':>11}")
        for digit, ap in enumerate(result["per_class_ap"]):
            print(f"{digit:>6}  {100 * ap:10.2f}%")
        print(f"{args.split} mAP@[.5:.95] of {run.path}: {100 * result['map']:.2f}%, mAP@0.5 "
              f"{100 * result['map_50']:.2f}%, mAP@0.75 {100 * result['map_75']:.2f}% ({result['n']:,} canvases, "
              f"{elapsed:.1f} s)")
    if write:
        print(f"updated {run.path / run.METRICS}")
    else:
        print("metrics.json not written: " + ("--no-write" if args.no_write else "the run has not finished training "
                                               "(resume it first)"))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    run = Run(args.run)
    if run.config().get("task") in ("segment", "detect"):
        raise ValueError(f"{run.path} is a {run.config()['task']} run: explain draws classification maps; its "
                         "predictions are in predictions.png (lesson 16 shows more)")
    model = run.model()
    dataset = run.dataset(args.split, name=args.dataset, root=args.data_root)
    try:
        indices = [int(i) for i in args.images.split(",") if i.strip()]
    except ValueError:
        raise ValueError(f"--images takes comma-separated integers, got {args.images!r}") from None
    if not indices or max(indices) >= len(dataset) or min(indices) < 0:
        raise ValueError(f"--images must be indices in [0, {len(dataset)}), got {args.images!r}")
    images = dataset.normalized(torch.tensor(indices))
    maps = explanations(model, images, [m.strip() for m in args.method.split(",")], layer=args.layer,
                        head=args.head, discard_ratio=args.discard_ratio)
    with torch.no_grad():
        predictions = model(images).argmax(1)
    titles = [f"#{i}: true {dataset.classes[int(dataset.labels[i])]}, pred {dataset.classes[int(p)]}"
              for i, p in zip(indices, predictions)]
    fig = plot_explanations(images, maps, titles, mean=dataset.mean, std=dataset.std,
                            suptitle=f"{run.config()['model']['name']}: where it looks")
    out = atomic_write(args.out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    tests = check_tests(args.tests.split(","))
    severities = check_severities(args.severity)
    if args.images < 0 or args.batch_size <= 0:
        raise ValueError(f"--images must be >= 0 (0: all) and --batch-size positive, got {args.images} and "
                         f"{args.batch_size}")
    run = Run(args.run)
    record = run.record()
    if record.task in ("segment", "detect"):
        raise ValueError(f"{run.path} is a {record.task} run: vitlab robustness measures classifiers (one label per "
                         "image)")
    if record.is_feature_extractor:
        raise ValueError(f"{run.path} holds a feature extractor (no classifier head): fine-tune it first "
                         f"(vitlab train --init {run.path} --dataset ...), then measure the fine-tuned run")
    device = pick_device(args.device)
    model = run.model(map_location=device)
    dataset = seeded_subset(run.dataset("test", root=args.data_root), args.images or None, args.seed)
    result = evaluate_robustness(model, dataset, tests, severities, batch_size=args.batch_size, device=device,
                                 precision=run.evaluation_precision(), seed=args.seed, progress=not args.quiet)
    result = {"run": run.name, "model": record.model.name, "family": record.model.family, "dataset": dataset.name,
              "split": "test", "device": str(device), **result, "command": command_line()}
    print(format_table(result))
    path = save_json(run.path / ROBUSTNESS_FILE, result)
    print(f"\nwrote {path} ({len(dataset):,} test images, {result['seconds']:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    path = build_report(args.runs, args.out, args.title)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    for split in ("train", "test"):
        dataset = load_dataset(args.dataset, "train+val" if split == "train" else "test", root=args.root, download=True)
        print(f"{args.dataset} {split}: {len(dataset):,} images in {data_root(args.root)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # figures go to files; never open a window
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "explain": cmd_explain,
                "robustness": cmd_robustness, "report": cmd_report, "download": cmd_download}
    try:
        return commands[args.command](args)
    except (DatasetNotFoundError, CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"vitlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
