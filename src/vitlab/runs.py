"""A training run: the folder that holds it (:class:`Run`) and the driver that makes one (:func:`train_run`).

Every run folder has the same files, and :class:`Run` is the only code that writes or reads them::

    config.json         model (name, family, config) + training recipe + dataset + command line
    model.safetensors   weights (safetensors: loading cannot run code)
    checkpoint.pt       resumable state: optimizer, scheduler, RNG, history (loaded with weights_only)
    history.csv         one row per epoch
    metrics.json        test accuracy, per-class accuracy, confusion matrix, parameters, FLOPs, time...
    curves.png, confusion.png

Every file is written atomically (a crash never leaves half a file). Reading a missing or corrupt
file raises :class:`RunError` naming the file, never returns an empty result.

:func:`train_run` is what ``vitlab train`` calls, and what lessons call directly::

    run = train_run("vit_mnist", "mnist", "runs/vit_mnist", time_budget=600)
    run.metrics()["test_accuracy"], run.model(), run.dataset("test")
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    atomic_write,
    load_state,
    load_weights,
    save_json,
    save_state,
    save_weights,
    unwrap,
)
from .configs import ConfigError
from .data import ImageTensorDataset, load_dataset
from .precision import describe_precision

__all__ = ["Run", "RunError", "train_run", "model_spec", "model_from_spec", "count_flops", "HISTORY_FIELDS",
           "command_line", "device_name", "check_resume_recipe"]

HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_time_s",
                  "train_images_per_s", "train_samples"]


class RunError(CheckpointError):
    """A run folder or one of its files is missing, corrupt, or not what the command needs."""


def model_spec(name: str, model: nn.Module) -> dict[str, Any]:
    """The ``model`` entry of ``config.json``: the registered name, the family, and every config field."""
    model = unwrap(model)
    family = getattr(type(model), "family", None)
    if family is None or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} is not a registered vitlab model family (see vitlab.registry)")
    return {"name": name, "family": family, "config": model.config.to_dict()}


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from its ``config.json`` entry (see :func:`model_spec`)."""
    from .registry import build_model

    try:
        family, fields = spec["family"], spec["config"]
    except (KeyError, TypeError):
        raise RunError(f"config.json has no usable 'model' entry (need 'family' and 'config'): {spec!r}") from None
    try:
        return build_model(family, fields)
    except (TypeError, ValueError) as error:
        raise RunError(f"config.json describes an invalid {family} model: {error}") from None


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of ``model`` for one image of shape ``(C, H, W)`` (``torch.utils.flop_counter``;
    1 multiply-add = 2 FLOPs), counted on a zero image on the model's own device. Attention runs through
    its math kernel while counting: the flop counter has no formula for the CPU's fused one and would
    count its matrix products as zero."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def check_resume_recipe(run: Run, saved: dict[str, Any], config: Any) -> None:
    """Refuse to resume ``run`` (its recorded ``config.json`` is ``saved``) with a
    :class:`~vitlab.train.TrainConfig` ``config`` other than its own (runs recorded with ``amp`` compare
    as their ``precision``; ``compile`` may change)."""
    from .train import recipe_differences

    try:
        diff = recipe_differences(saved.get("train", {}), config)
    except ConfigError as error:
        raise RunError(f"cannot resume {run.path}: its train settings are not valid here: {error}") from None
    if diff:
        raise RunError(f"cannot resume {run.path}: its train settings differ from this command's "
                       f"(field: (saved, now)) {diff}")


def command_line() -> str:
    """This process's command line, as ``vitlab ...`` (for the record in config.json / metrics.json)."""
    return " ".join(shlex.quote(a) for a in ["vitlab", *sys.argv[1:]])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def source_kind(source: str | None) -> str:
    """Which copy of a dataset a ``source`` string names, without the folder it was found in:
    ``"cifar10-jpg at /data/cifar10-jpg (full)"`` -> ``"cifar10-jpg (full)"``. A run trained on one
    machine and reloaded on another (another data path) still uses the same copy."""
    import re

    return re.sub(r" at \S+", "", source or "")


def _same_name(a: str | None, b: str | None) -> bool:
    """Whether two dataset names mean the same dataset (aliases like ``CIFAR-10``; folder paths resolved)."""
    from .data import canonical_name

    if a is None or b is None:
        return False
    return canonical_name(a) == canonical_name(b)


class Run:
    """A run folder. Nothing is read until asked for; every read checks the file and says what is wrong."""

    CONFIG, METRICS, HISTORY, WEIGHTS, STATE = "config.json", "metrics.json", "history.csv", "model.safetensors", \
        "checkpoint.pt"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path / self.STATE

    # ------------------------------------------------------------------ reading
    def _read_json(self, filename: str) -> dict[str, Any]:
        path = self.path / filename
        if not path.is_file():
            hint = " (is it a vitlab run folder?)" if filename == self.CONFIG else \
                " (the run has not finished: train it to the end, or resume it)" if filename == self.METRICS else ""
            raise RunError(f"{path} does not exist{hint}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunError(f"{path} is corrupt (not valid JSON: {error}); restore it or retrain the run") from None
        if not isinstance(data, dict):
            raise RunError(f"{path} is corrupt: expected a JSON object, got {type(data).__name__}")
        return data

    def exists(self) -> bool:
        """Whether the folder holds a run (its ``config.json``)."""
        return (self.path / self.CONFIG).is_file()

    def is_finished(self) -> bool:
        """Whether training finished and the test metrics were written."""
        return (self.path / self.METRICS).is_file()

    def has_state(self) -> bool:
        return self.state_path.is_file()

    def config(self) -> dict[str, Any]:
        """``config.json``: ``{"model", "train", "dataset", "command", ...}``."""
        return self._read_json(self.CONFIG)

    def evaluation_precision(self) -> str:
        """The precision to re-evaluate this run in (:func:`vitlab.precision.recorded_precision`: fp32 for a
        run that computed in fp32), from its config and, when it finished and is readable, its metrics."""
        from .precision import recorded_precision

        try:
            metrics = self.metrics() if self.is_finished() else {}
        except RunError:  # unreadable metrics: the config alone decides
            metrics = {}
        return recorded_precision(self.config().get("train", {}), metrics)

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: test accuracy and everything else measured at the end of training."""
        return self._read_json(self.METRICS)

    def history(self, missing_ok: bool = False) -> list[dict[str, float]]:
        """``history.csv`` as one dict of floats per epoch (``[]`` if missing and ``missing_ok``)."""
        path = self.path / self.HISTORY
        if not path.is_file():
            if missing_ok:
                return []
            raise RunError(f"{path} does not exist")
        try:
            with open(path, newline="") as f:
                return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        except (ValueError, TypeError, csv.Error) as error:
            raise RunError(f"{path} is corrupt: {error}") from None

    def load_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The resumable training state (``checkpoint.pt``), loaded without executing code."""
        return load_state(self.state_path, map_location)

    def model(self, map_location: str | torch.device = "cpu") -> nn.Module:
        """The trained model, rebuilt from ``config.json`` and ``model.safetensors``, in eval mode."""
        model = model_from_spec(self.config().get("model", {}))
        load_weights(model, self.path / self.WEIGHTS)
        return model.to(map_location).eval()

    def dataset(self, split: str = "test", name: str | None = None, root: str | os.PathLike[str] | None = None,
                subset: int | None = None) -> ImageTensorDataset:
        """A split of the dataset the run was trained on, loaded as it was: the same validation split,
        seed, image size, channels and recorded subset (``subset`` chooses another size).

        ``name`` loads another dataset of the same shape instead. The run's own split is checked
        against the recorded size: if the data folder now holds another copy (e.g. the full CIFAR-10
        where the run used the subset), that is a :class:`RunError`, not a silent switch.
        """
        config = self.config()
        data, fields = config.get("dataset", {}), config.get("model", {}).get("config", {})
        dataset_name = name or data.get("name")
        if not dataset_name:
            raise RunError(f"{self.path / self.CONFIG} does not say which dataset the run used: pass a dataset name")
        own = _same_name(dataset_name, data.get("name"))
        side = fields.get("input_size") or fields.get("image_size")  # the size of the images the model takes
        recorded_subset = {"train": data.get("subset"), "test": data.get("test_subset")}.get(split)
        dataset = load_dataset(dataset_name, split, root=root, val_size=data.get("val_size", 0.1),
                               subset=subset if subset is not None or not own else recorded_subset,
                               seed=config.get("train", config.get("dino", {})).get("seed", 0), image_size=side,
                               channels=fields.get("in_channels"), classes=data.get("class_subset") if own else None)
        if name is None and subset is None and not self.is_own_data(dataset):
            raise RunError(f"{self.path} was made with {data.get(f'{split}_n')} {split} images of {data.get('name')} "
                           f"({data.get('source') or 'source not recorded'}), but {len(dataset)} load now from "
                           f"{dataset.source or dataset.name}: the data folder holds another copy. Name the dataset "
                           "explicitly to evaluate on it (vitlab evaluate --dataset NAME), which records the result "
                           "under its own keys")
        return dataset

    def is_own_data(self, dataset: ImageTensorDataset) -> bool:
        """Whether ``dataset`` is the split the run recorded: same dataset name, and the same size and
        source where those were recorded."""
        data = self.config().get("dataset", {})
        if not _same_name(dataset.name, data.get("name")):
            return False
        recorded_n = data.get(f"{dataset.split}_n")
        if recorded_n is not None and recorded_n != len(dataset):
            return False
        recorded_source, source = data.get("source"), getattr(dataset, "source", "")
        return not (recorded_source and source and source_kind(recorded_source) != source_kind(source))

    # ------------------------------------------------------------------ writing
    def write_config(self, config: dict[str, Any]) -> Path:
        return save_json(self.path / self.CONFIG, config)

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return save_json(self.path / self.METRICS, metrics)

    def write_history(self, history: Sequence[dict[str, Any]], fields: Sequence[str] = HISTORY_FIELDS) -> Path:
        """``history.csv``: one row per epoch, the columns ``fields`` (a training run's by default)."""
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(fields))
                writer.writeheader()
                for row in history:
                    writer.writerow({k: row.get(k) for k in fields})
        return atomic_write(self.path / self.HISTORY, write)

    def save_weights(self, model: nn.Module) -> Path:
        return save_weights(model, self.path / self.WEIGHTS)

    def save_state(self, state: dict[str, Any]) -> Path:
        return save_state(self.state_path, state)

    def record_evaluation(self, result: dict[str, Any], dataset: ImageTensorDataset,
                          command: str | None = None) -> dict[str, Any]:
        """Merge an :func:`~vitlab.train.evaluate` result on ``dataset`` into ``metrics.json`` and return
        the new metrics.

        The run's own split (:meth:`is_own_data`) is recorded under plain keys (``test_accuracy``, with
        the per-class table and confusion matrix, or ``val_accuracy``); another dataset, size or copy
        gets its own keys, e.g. ``fashion-mnist_test_accuracy`` or ``cifar10_test_accuracy``, so no
        recorded number is replaced by one measured on other images.
        """
        metrics = self.metrics()
        split, classes = dataset.split, dataset.classes
        prefix = split if self.is_own_data(dataset) else f"{dataset.name}_{split}"
        metrics.update({f"{prefix}_accuracy": result["accuracy"], f"{prefix}_loss": result["loss"],
                        f"{prefix}_n": result["n"]})
        if prefix == "test":
            metrics["per_class_accuracy"] = dict(zip(classes, result["per_class_accuracy"]))
            metrics["confusion"] = result["confusion"]
        metrics["evaluated_with"] = command or command_line()
        self.write_metrics(metrics)
        return metrics

    def write_figures(self, history: Sequence[dict[str, Any]], metrics: dict[str, Any], classes: Sequence[str],
                      title: str) -> None:
        """``curves.png`` (loss and accuracy per epoch) and ``confusion.png`` (test confusion matrix)."""
        import matplotlib.pyplot as plt

        from .plots import plot_confusion, plot_history

        if history:
            fig = plot_history(history, title=title)
            atomic_write(self.path / "curves.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
            plt.close(fig)
        fig = plot_confusion(metrics["confusion"], classes,
                             title=f"{title}: test accuracy {100 * metrics['test_accuracy']:.2f}%")
        atomic_write(self.path / "confusion.png", lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
        plt.close(fig)


def _pretrained_model(init: str | os.PathLike[str], resumed: Run | None) -> tuple[nn.Module, str, dict[str, Any],
                                                                               dict[str, Any]]:
    """The model to fine-tune, its name for the record, the recipe to start from, and the ``init``
    entry of ``config.json``.

    Resuming a run that has saved an epoch rebuilds the architecture from its own ``config.json``
    (the weights then come from its checkpoint): the pretrained weights are not fetched again.
    """
    from .pretrained import load
    from .registry import get_model, model_names

    spec = str(init)
    if resumed is not None and resumed.has_state() and resumed.exists():
        saved = resumed.config()
        if saved.get("init", {}).get("spec") != spec:
            raise RunError(f"cannot resume {resumed.path}: it was fine-tuned from "
                           f"{saved.get('init', {}).get('spec')!r}, not {spec!r}")
        # The architecture as pretrained (the head and input size are set again from the dataset).
        model = model_from_spec({**saved["model"], "config": saved["init"]["config"]})
        return model, saved["model"]["name"], saved["init"].get("recipe", {}), saved["init"]
    model = load(spec)
    name, recipe, source = spec, {}, spec
    if Run(spec).exists():  # a vitlab run folder: keep its model name, and its recipe's augmentation and batch size
        saved = Run(spec).config()
        name = saved.get("model", {}).get("name", spec)
        recipe = {k: v for k, v in get_model(name).recipe.items()
                  if k in ("augment", "batch_size", "label_smoothing")} if name in model_names() else {}
        source = f"vitlab run {Run(spec).path.resolve()}"
    return model, name, recipe, {"spec": spec, "source": source, "config": model.config.to_dict(), "recipe": recipe}


def train_run(model: str | None, dataset: str, out: str | os.PathLike[str], *, recipe: dict[str, Any] | None = None,
              model_args: dict[str, Any] | None = None, seed: int = 0, data_root: str | os.PathLike[str] | None = None,
              val_size: int | float = 0.1, subset: int | None = None, test_subset: int | None = None,
              classes: Sequence[str | int] | None = None, init: str | os.PathLike[str] | None = None,
              image_size: int | None = None, time_budget: float | None = None, resume: bool = False,
              device: str | torch.device | None = None, progress: bool = True, verbose: bool = True,
              command: str | None = None, experiment: str | None = None) -> Run:
    """Train a registered model on a dataset, evaluate it on the test split, and return its :class:`Run`.

    ``model``: a registered name (:func:`vitlab.registry.model_names`; register a new architecture with
    :func:`vitlab.registry.register_model` so that its run folder can be reloaded); ``model_args`` replace fields of
    its preset config (the dataset always sets ``in_channels``, ``image_size`` and ``num_classes``
    unless given). ``recipe``: :class:`~vitlab.train.TrainConfig` fields replacing the model's tuned
    recipe (``None`` values are ignored). ``seed`` fixes the splits, the initialization and the data
    order. ``time_budget`` (seconds) plans the number of epochs from a measured step time (an explicit
    ``recipe["epochs"]`` is then the most it may run). ``resume`` continues the run in ``out`` from its
    last finished epoch (a finished run is only re-evaluated); without it, an existing run is an error.
    Interrupted with Ctrl-C, it raises ``KeyboardInterrupt`` after the last finished epoch was saved.

    ``classes`` (names or indices) trains on those classes of the dataset only (relabelled in that order).
    ``experiment`` names the comparison the run belongs to (recorded in ``config.json``; the report
    gives each experiment its own section).

    Fine-tuning: ``init`` is anything :func:`vitlab.pretrained.load` accepts (a run folder, a weights
    file, ``timm:NAME``, ...); the architecture and weights come from it (``model`` is then ``None``),
    with a new zero-initialized head for the dataset's classes. ``image_size`` sets the resolution the
    model runs at (its position table resampled; default the checkpoint's); images of another size
    are resized to it inside the model. The recipe starts from :data:`vitlab.train.FINETUNE_RECIPE`
    (:data:`~vitlab.train.PROBE_RECIPE` with ``freeze="backbone"``) over the pretrained model's own
    recipe where it has one. ``resume`` rebuilds the model from the run folder, so the pretrained
    weights are not needed again once the first epoch is saved.
    """
    from .model import count_parameters
    from .pretrained import adapt
    from .registry import create_model, model_config
    from .runtime import pick_device, seed_everything
    from .train import FINETUNE_RECIPE, PROBE_RECIPE, DistContext, TrainConfig, evaluate, fit, plan_for_time_budget
    from .train import recipe as tuned_recipe

    run = Run(out)
    device = pick_device(None if device is None else str(device))
    command = command or command_line()
    overrides = dict(recipe or {})
    if "seed" in overrides and overrides["seed"] is not None and overrides["seed"] != seed:
        raise ValueError("pass the seed as train_run(seed=...), not in the recipe: one seed fixes everything")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time budget must be a positive number of seconds, got {time_budget}")
    if not resume and run.has_state():
        raise RunError(f"{run.path} already holds a run: pass --resume (resume=True) to continue it, "
                       "or choose another output folder")
    if init is not None and (model is not None or model_args):
        raise ValueError("with init (--init) the architecture comes from the pretrained model: pass no model name "
                         "(--model) and no model_args (--model-arg)")
    if init is None and model is None:
        raise ValueError("name a registered model, or a pretrained one to fine-tune (init / --init)")
    if image_size is not None and init is None:
        raise ValueError("image_size (--image-size) is for fine-tuning (init); a new model takes the dataset's size")
    classes = list(classes) if classes is not None else None

    pretrained, init_info = None, None
    if init is not None:
        pretrained, model, base_recipe, init_info = _pretrained_model(init, run if resume else None)
        finetune = PROBE_RECIPE if overrides.get("freeze") == "backbone" else FINETUNE_RECIPE
        config = TrainConfig.from_dict({**base_recipe, **finetune,
                                        **{k: v for k, v in overrides.items() if v is not None}, "seed": seed})
        preset = pretrained.config
    else:
        config = tuned_recipe(model, **{**overrides, "seed": seed})
        preset = model_config(model, **(model_args or {}))
    # Folder datasets are decoded at the size the model takes (named datasets have their own size).
    side = image_size or (preset.input_resolution if pretrained is not None else preset.image_size)
    common = dict(root=data_root, val_size=val_size, seed=seed, image_size=side, channels=preset.in_channels,
                  classes=classes)
    train_set = load_dataset(dataset, "train", subset=subset, **common)
    val_set = load_dataset(dataset, "val", **common)
    test_set = load_dataset(dataset, "test", subset=test_subset, **common)
    channels, height, _ = train_set.image_shape
    seed_everything(seed)
    if pretrained is not None:
        if channels != pretrained.config.in_channels:
            raise ValueError(f"{init} takes {pretrained.config.in_channels}-channel images but {dataset} has "
                             f"{channels} channels")
        # A new zero-initialized head for these classes; the position table resampled to image_size;
        # the dataset's images resized inside the model when their size differs.
        net = adapt(pretrained, image_size=image_size, input_size=height)
        net.reset_classifier(train_set.num_classes)  # always a new head: the classes are new, even if as many
    else:
        # The dataset decides the input and output shapes; the preset (and model_args) decide the rest.
        fields = {"in_channels": channels, "image_size": height, "num_classes": train_set.num_classes,
                  **(model_args or {})}
        net = create_model(model, **fields)

    if time_budget is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--time-budget measures one process; under torchrun pass --epochs instead")
        if resume and run.exists():  # a resumed run keeps the plan it was started with
            config = TrainConfig.from_dict(run.config()["train"])
        else:
            config = plan_for_time_budget(net, train_set, val_set, config, time_budget, device,
                                          max_epochs=overrides.get("epochs"))
            if verbose:
                print(f"time budget {time_budget:.0f} s: {config.epochs} epoch(s)"
                      + (f" of {config.max_steps_per_epoch} steps" if config.max_steps_per_epoch else ""), flush=True)
    run_config = {
        "model": model_spec(model, net),
        "train": config.to_dict(),
        "dataset": {"name": dataset, "source": getattr(train_set, "source", ""), "val_size": val_size,
                    "subset": subset, "test_subset": test_subset, "train_n": len(train_set), "val_n": len(val_set),
                    "test_n": len(test_set), "classes": train_set.classes,
                    **({"class_subset": classes} if classes is not None else {}),
                    "mean": list(train_set.mean), "std": list(train_set.std)},
        **({"init": init_info} if init_info is not None else {}),
        **({"experiment": experiment} if experiment else {}),
        **({"time_budget_s": time_budget} if time_budget is not None else {}),
    }
    dist = DistContext.from_env(device.type)
    if resume and run.exists():
        saved = run.config()
        for key in ("model", "init"):
            if saved.get(key) != run_config.get(key):
                raise RunError(f"cannot resume {run.path}: its {key} settings differ from this command's "
                               f"(saved {saved.get(key)} vs now {run_config[key]})")
        check_resume_recipe(run, saved, config)
        # The same data: a copy that changed under the run (e.g. the full CIFAR-10 appearing where the
        # subset was) must not be trained on silently.
        identity = [k for k in ("name", "source", "train_n", "val_n", "test_n", "class_subset")
                    if saved.get("dataset", {}).get(k)]
        before = {k: source_kind(saved["dataset"][k]) if k == "source" else saved["dataset"][k] for k in identity}
        now = {k: source_kind(run_config["dataset"][k]) if k == "source" else run_config["dataset"][k]
               for k in identity}
        if before != now:
            raise RunError(f"cannot resume {run.path}: its dataset differs from what this command loads "
                           f"(saved {before} vs now {now})")
    params = count_parameters(net)
    flops = count_flops(net, train_set.image_shape)
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config({**run_config, "command": command})
        if verbose:
            print(f"training {model} ({params:,} parameters) on {dataset}: {len(train_set):,} train / "
                  f"{len(val_set):,} val / {len(test_set):,} test images, device {device}, "
                  f"precision {describe_precision(config.precision, device)}"
                  + (f", {dist.world_size} processes" if dist.enabled else ""), flush=True)

    previous = None
    if resume and run.is_finished():
        try:
            previous = run.metrics()
        except RunError as error:  # re-evaluating rewrites it: a damaged file must not block the repair
            warnings.warn(f"{error}; it will be rewritten", stacklevel=2)
    started = time.perf_counter()
    history = fit(net, train_set, val_set, config, out_dir=run, resume=resume, device=device, progress=progress)
    train_time = time.perf_counter() - started
    result = evaluate(net, test_set, config.eval_batch_size, dist=dist, device=next(net.parameters()).device,
                      precision=config.precision)
    if not dist.is_main:
        return run
    # A resumed run adds the time spent before the interruption (kept in the history rows).
    total_train_time = sum(row.get("epoch_time_s", 0.0) for row in history) if resume else train_time
    metrics = {
        "test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_n": result["n"],
        "per_class_accuracy": dict(zip(test_set.classes, result["per_class_accuracy"])),
        "confusion": result["confusion"],
        "final_val_accuracy": history[-1].get("val_accuracy") if history else None,
        "epochs": len(history), "params": params, "trainable_params": count_parameters(net), "flops": flops,
        "train_time_s": round(total_train_time, 2),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "device": device_name(next(net.parameters()).device), "world_size": dist.world_size,
        "precision": describe_precision(config.precision, next(net.parameters()).device),
        "torch": torch.__version__, "python": platform.python_version(), "seed": seed,
        "model": model, "dataset": dataset, "command": command,
        "time_budget_s": time_budget, "train_n": len(train_set), "recipe": config.to_dict(),
        **({"resumed_from": previous.get("command")} if previous else {}),
    }
    if hasattr(net, "forward_exits"):  # an early-exit model: accuracy against compute, and measured speed
        from .early_exit import exit_report

        metrics["exit_curve"] = exit_report(net, test_set)
    run.write_metrics(metrics)
    run.write_figures(history, metrics, test_set.classes, f"{model} on {dataset}")
    if verbose:
        print(f"test accuracy: {100 * metrics['test_accuracy']:.2f}% on {metrics['test_n']:,} test images "
              f"(train time {metrics['train_time_s']:.0f} s)")
        print(f"run saved in {run.path}")
    return run
