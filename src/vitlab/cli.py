"""Command line: ``python -m vitlab {train,evaluate,download}`` (also the ``vitlab`` script).

Modelled on torchvision's reference scripts: every knob is an explicit flag,
every run writes a self-describing folder::

    runs/NAME/config.json         model + training recipe + dataset + command line
    runs/NAME/model.safetensors   final weights
    runs/NAME/checkpoint.pt       resumable state (optimizer, scheduler, RNG, history)
    runs/NAME/history.csv         one row per epoch
    runs/NAME/metrics.json        test accuracy, per-class accuracy, confusion matrix, params, time...
    runs/NAME/curves.png          loss and accuracy, train vs validation
    runs/NAME/confusion.png       confusion matrix heatmap
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["main", "build_parser"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--model-arg expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    return overrides


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the empty ones (None, False, [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, []):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlab", description="Train, evaluate and inspect Vision Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model and evaluate it on the test set",
                           formatter_class=_HelpFormatter)
    train.add_argument("--model", default="vit_mnist", help="model preset (vit_seed, vit_mnist, vit_cifar, ...)")
    train.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model config field, e.g. --model-arg patch_size=7 (repeatable)")
    train.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist, cifar10, cifar100 or folder:PATH")
    train.add_argument("--data-root", default=None, help="dataset folder ($VITLAB_DATA, else ./data)")
    recipe = train.add_argument_group("training recipe (unset flags take the model preset's tuned recipe, "
                                      "see vitlab.train.RECIPES, else the value shown)")
    recipe.add_argument("--epochs", type=int, default=None, help="(10)")
    recipe.add_argument("--batch-size", type=int, default=None, help="(128)")
    recipe.add_argument("--lr", type=float, default=None, help="peak learning rate (1e-3)")
    recipe.add_argument("--min-lr", type=float, default=None, help="final learning rate of the cosine schedule (1e-5)")
    recipe.add_argument("--weight-decay", type=float, default=None, help="(0.05)")
    recipe.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default=None, help="(adamw)")
    recipe.add_argument("--momentum", type=float, default=None, help="SGD momentum (0.9)")
    recipe.add_argument("--warmup-epochs", type=float, default=None, help="(1.0)")
    recipe.add_argument("--label-smoothing", type=float, default=None, help="(0.0)")
    recipe.add_argument("--grad-clip", type=float, default=None, help="max gradient norm, 0 disables (1.0)")
    recipe.add_argument("--augment", default=None, help="none, digits, crop, cifar, cifar-strong (none)")
    train.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help="fit the number of epochs to this wall-clock budget (measured on this machine); "
                            "an explicit --epochs becomes the most it may run")
    train.add_argument("--val-size", type=float, default=0.1,
                       help="validation share of the training set (a fraction, or a count if >= 1)")
    train.add_argument("--subset", type=int, default=None, help="train on a seeded random subset of N images")
    train.add_argument("--test-subset", type=int, default=None, help="evaluate on a seeded subset of N test images")
    train.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut epochs short (smoke tests)")
    train.add_argument("--seed", type=int, default=0, help="fixes initialization, data order and splits")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    train.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    train.add_argument("--out", required=True, help="run folder to write")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = sub.add_parser("evaluate", help="evaluate a run folder's model on a dataset split",
                              formatter_class=_HelpFormatter)
    evaluate.add_argument("run", help="run folder (config.json + model.safetensors)")
    evaluate.add_argument("--dataset", default=None, help="dataset (default: the one the run was trained on)")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train"])
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--subset", type=int, default=None)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--batch-size", type=int, default=1000)
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


def _write_figures(out: Path, history: list[dict[str, Any]], metrics: dict[str, Any], classes: Sequence[str],
                   title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_confusion, plot_history

    if history:
        fig = plot_history(history, title=title)
        fig.savefig(out / "curves.png", dpi=120)
        plt.close(fig)
    fig = plot_confusion(metrics["confusion"], classes,
                         title=f"{title}: test accuracy {100 * metrics['accuracy']:.2f}%")
    fig.savefig(out / "confusion.png", dpi=120)
    plt.close(fig)


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, model_spec, save_json
    from .data import load_dataset
    from .model import count_parameters, create_model, preset_config
    from .runtime import device as pick_device
    from .runtime import seed_everything
    from .train import DistContext, TrainConfig, evaluate, fit, plan_for_time_budget, recipe

    out = Path(args.out)
    device = pick_device(args.device)
    val_size: int | float = int(args.val_size) if args.val_size >= 1 else args.val_size
    overrides = _model_overrides(args.model_arg)
    preset_fields = _preset_fields(args.model, overrides)
    common = dict(root=args.data_root, val_size=val_size, seed=args.seed,
                  image_size=preset_fields.get("image_size"), channels=preset_fields.get("in_channels"))
    train_set = load_dataset(args.dataset, "train", subset=args.subset, **common)
    val_set = load_dataset(args.dataset, "val", **common)
    test_set = load_dataset(args.dataset, "test", subset=args.test_subset, **common)
    channels, height, _ = train_set.image_shape
    # The dataset decides the input and output shapes; the preset decides the rest.
    overrides = {"in_channels": channels, "image_size": height, "num_classes": train_set.num_classes, **overrides}

    seed_everything(args.seed)
    model = create_model(args.model, **overrides)
    config = recipe(args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
                    weight_decay=args.weight_decay, optimizer=args.optimizer, momentum=args.momentum,
                    warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
                    augment=args.augment, seed=args.seed, amp=not args.no_amp,
                    max_steps_per_epoch=args.max_steps_per_epoch)
    if args.grad_clip is not None:
        config.grad_clip = args.grad_clip or None
    config_path = out / "config.json"
    if args.time_budget is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--time-budget measures one process; under torchrun pass --epochs instead")
        saved = json.loads(config_path.read_text()) if args.resume and config_path.is_file() else None
        if saved is not None:  # a resumed run keeps the plan it was started with
            config = TrainConfig.from_dict(saved["train"])
        else:
            config = plan_for_time_budget(model, train_set, val_set, config, args.time_budget, device,
                                          max_epochs=args.epochs)
            print(f"time budget {args.time_budget:.0f} s: {config.epochs} epoch(s)"
                  + (f" of {config.max_steps_per_epoch} steps" if config.max_steps_per_epoch else ""), flush=True)
    run_config = {
        "model": model_spec(args.model, model),
        "train": config.to_dict(),
        "dataset": {"name": args.dataset, "val_size": val_size, "subset": args.subset,
                    "test_subset": args.test_subset, "train_n": len(train_set), "val_n": len(val_set),
                    "test_n": len(test_set), "classes": train_set.classes,
                    "mean": list(train_set.mean), "std": list(train_set.std)},
        **({"time_budget_s": args.time_budget} if args.time_budget is not None else {}),
    }
    dist = DistContext.from_env(device.type)
    if args.resume and config_path.is_file():
        saved = json.loads(config_path.read_text())
        for key in ("model", "train"):
            if saved.get(key) != run_config[key]:
                raise CheckpointError(f"cannot resume {out}: its {key} settings differ from this command's "
                                      f"(saved {saved.get(key)} vs now {run_config[key]})")
    elif not args.resume and (out / "checkpoint.pt").exists():
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(config_path, {**run_config, "command": _command_line()})
        print(f"training {args.model} ({count_parameters(model):,} parameters) on {args.dataset}: "
              f"{len(train_set):,} train / {len(val_set):,} val / {len(test_set):,} test images, device {device}"
              + (f", {dist.world_size} processes" if dist.enabled else ""), flush=True)

    started = time.perf_counter()
    try:
        history = fit(model, train_set, val_set, config, out_dir=out, resume=args.resume, device=device,
                      progress=not args.quiet)
    except KeyboardInterrupt:
        if dist.is_main:
            print(f"\ninterrupted: the last finished epoch is saved in {out}; continue with the same command "
                  "plus --resume", file=sys.stderr)
        return 130
    train_time = time.perf_counter() - started
    metrics = evaluate(model, test_set, config.eval_batch_size, dist=dist, device=next(model.parameters()).device)
    if not dist.is_main:
        return 0
    previous = _read_json(out / "metrics.json")
    # A resumed run adds the time spent before the interruption (kept in the history rows).
    total_train_time = sum(row.get("epoch_time_s", 0.0) for row in history) if args.resume else train_time
    metrics = {
        "test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"], "test_n": metrics["n"],
        "per_class_accuracy": dict(zip(test_set.classes, metrics["per_class_accuracy"])),
        "confusion": metrics["confusion"],
        "final_val_accuracy": history[-1].get("val_accuracy") if history else None,
        "epochs": len(history), "params": count_parameters(model),
        "train_time_s": round(total_train_time, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "device": _device_name(next(model.parameters()).device), "world_size": dist.world_size,
        "torch": torch.__version__, "python": platform.python_version(), "seed": args.seed,
        "model": args.model, "dataset": args.dataset, "command": _command_line(),
        "time_budget_s": args.time_budget, "train_n": len(train_set), "recipe": config.to_dict(),
        **({"resumed_from": previous.get("command")} if args.resume and previous else {}),
    }
    _write_json(out / "metrics.json", metrics)
    _write_figures(out, history, {"accuracy": metrics["test_accuracy"], "confusion": metrics["confusion"]},
                   test_set.classes, f"{args.model} on {args.dataset}")
    print(f"test accuracy: {100 * metrics['test_accuracy']:.2f}% on {metrics['test_n']:,} test images "
          f"(train time {metrics['train_time_s']:.0f} s)")
    print(f"run saved in {out}")
    return 0


def _preset_fields(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from .model import PRESETS, preset_config

    from .cnn import CNN_ARCHITECTURES, CNNConfig

    if name in PRESETS:
        return preset_config(name, **{k: v for k, v in overrides.items()}).to_dict()
    if name in CNN_ARCHITECTURES:
        return CNNConfig(arch=name, **overrides).to_dict()
    return dict(overrides)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import load_dataset
    from .runtime import device as pick_device
    from .train import evaluate

    run = Path(args.run)
    model = load_model(run, map_location=pick_device(args.device))
    config = json.loads((run / "config.json").read_text())
    data = config.get("dataset", {})
    name = args.dataset or data.get("name", "mnist")
    fields = config["model"]["config"]
    val_size = data.get("val_size", 0.1)
    dataset = load_dataset(name, args.split, root=args.data_root, val_size=val_size, subset=args.subset,
                           seed=config.get("train", {}).get("seed", 0), image_size=fields.get("image_size"),
                           channels=fields.get("in_channels"))
    started = time.perf_counter()
    result = evaluate(model, dataset, args.batch_size)
    elapsed = time.perf_counter() - started
    _print_table(result, dataset.classes)
    print(f"{args.split} accuracy of {run}: {100 * result['accuracy']:.2f}% ({result['n']:,} images, {elapsed:.1f} s)")
    if not args.no_write:
        metrics = _read_json(run / "metrics.json")
        prefix = args.split if name == data.get("name") else f"{name}_{args.split}"
        metrics.update({f"{prefix}_accuracy": result["accuracy"], f"{prefix}_loss": result["loss"],
                        f"{prefix}_n": result["n"]})
        if prefix == "test":
            metrics["per_class_accuracy"] = dict(zip(dataset.classes, result["per_class_accuracy"]))
            metrics["confusion"] = result["confusion"]
        metrics["evaluated_with"] = _command_line()
        _write_json(run / "metrics.json", metrics)
        print(f"updated {run / 'metrics.json'}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoint import load_model
    from .data import load_dataset
    from .explain import attention_maps, attention_rollout, class_token_attention, grad_cam
    from .plots import plot_explanations

    run = Path(args.run)
    model = load_model(run)
    config = json.loads((run / "config.json").read_text())
    data = config.get("dataset", {})
    fields = config["model"]["config"]
    dataset = load_dataset(args.dataset or data.get("name", "mnist"), args.split, root=args.data_root,
                           val_size=data.get("val_size", 0.1), seed=config.get("train", {}).get("seed", 0),
                           image_size=fields.get("image_size"), channels=fields.get("in_channels"))
    try:
        indices = [int(i) for i in args.images.split(",") if i.strip()]
    except ValueError:
        raise ValueError(f"--images takes comma-separated integers, got {args.images!r}") from None
    if not indices or max(indices) >= len(dataset) or min(indices) < 0:
        raise ValueError(f"--images must be indices in [0, {len(dataset)}), got {args.images!r}")
    index = torch.tensor(indices)
    images = dataset.normalized(index)
    methods = [m.strip() for m in args.method.split(",")]
    is_vit = config["model"]["family"] == "vit"
    maps = {}
    for method in methods:
        if method in ("rollout", "attention") and not is_vit:
            raise ValueError(f"--method {method} needs a ViT; use gradcam for {config['model']['family']}")
        if method == "rollout":
            maps["attention rollout"] = attention_rollout(attention_maps(model, images),
                                                          discard_ratio=args.discard_ratio)
        elif method == "attention":
            head = "mean of heads" if args.head is None else f"head {args.head}"
            maps[f"attention, layer {args.layer}, {head}"] = class_token_attention(
                attention_maps(model, images), args.layer, args.head)
        elif method == "gradcam":
            maps["Grad-CAM"] = grad_cam(model, images, layer=args.layer if is_vit else None)
        else:
            raise ValueError(f"unknown method {method!r}: choose rollout, gradcam or attention")
    with torch.no_grad():
        predictions = model(images).argmax(1)
    titles = [f"#{i}: true {dataset.classes[int(dataset.labels[i])]}, pred {dataset.classes[int(p)]}"
              for i, p in zip(indices, predictions)]
    fig = plot_explanations(images, maps, titles, mean=dataset.mean, std=dataset.std,
                            suptitle=f"{config['model']['name']}: where it looks")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    path = build_report(args.runs, args.out, args.title)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data import data_root, load_dataset

    for split in ("train", "test"):
        dataset = load_dataset(args.dataset, "train+val" if split == "train" else "test", root=args.root, download=True)
        print(f"{args.dataset} {split}: {len(dataset):,} images in {data_root(args.root)}")
    return 0


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["vitlab", *sys.argv[1:]])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from .checkpoint import save_json
    save_json(path, data)


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError

    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "explain": cmd_explain, "report": cmd_report,
                "download": cmd_download}
    try:
        return commands[args.command](args)
    except (DatasetNotFoundError, CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"vitlab {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
