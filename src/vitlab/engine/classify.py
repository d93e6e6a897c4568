"""Image classification as a run: :class:`ClassifyTask` for the driver, and :func:`train_run`, what ``vitlab
train`` calls and what lessons call directly::

    run = train_run("vit_mnist", "mnist", "runs/vit_mnist", time_budget=600)
    run.metrics()["test_accuracy"], run.model(), run.dataset("test")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch

from ..analysis.plots import plot_confusion, plot_history
from ..core.io import atomic_write
from ..core.precision import describe_precision
from ..core.runtime import seed_everything
from ..data.datasets import ImageTensorDataset, ResizeMode, load_dataset
from ..models.convert import adapt
from ..models.measure import count_parameters
from ..models.registry import create_model, get_model, model_config, model_names
from ..models.vit import ViT
from ..runfolder.run import Run, RunError, load_model, model_from_spec, model_spec
from ..runfolder.schema import DatasetRecord, InitRecord, ModelRecord, RunConfig
from .budget import BudgetPlan
from .driver import Task, drive
from .loop import DistContext, Trainer
from .recipe import FINETUNE_RECIPE, PROBE_RECIPE, TrainConfig, recipe
from .train import ClassifierTrainer, budget_plan, evaluate

__all__ = ["ClassifyTask", "train_run", "dataset_record"]


def dataset_record(train_set: ImageTensorDataset, val_set: ImageTensorDataset, test_set: ImageTensorDataset,
                   **recorded: Any) -> DatasetRecord:
    """The ``dataset`` entry of a labelled image set's run: its name, copy, sizes, classes and statistics
    (``recorded``: how it was asked for, e.g. ``val_size``, ``subset``)."""
    return DatasetRecord(name=recorded.pop("name"), source=getattr(train_set, "source", ""), train_n=len(train_set),
                         val_n=len(val_set), test_n=len(test_set), classes=list(train_set.classes),
                         mean=list(train_set.mean), std=list(train_set.std), **recorded)


def _pretrained(init: str, resumed: Run | None) -> tuple[torch.nn.Module, str, dict[str, Any], InitRecord]:
    """The model to fine-tune, its name for the record, the recipe to start from, and the ``init`` record.

    Resuming a run that has saved an epoch rebuilds the architecture from its own ``config.json``
    (the weights then come from its checkpoint): the pretrained weights are not fetched again.
    """
    if resumed is not None and resumed.has_state() and resumed.exists():
        saved = resumed.record()
        if saved.init is None or saved.init.spec != init:
            raise RunError(f"cannot resume {resumed.path}: it was fine-tuned from "
                           f"{saved.init.spec if saved.init else None!r}, not {init!r}")
        # The architecture as pretrained (the head and input size are set again from the dataset).
        model = model_from_spec({**saved.model.to_dict(), "config": saved.init.config})
        return model, saved.model.name, saved.init.recipe, saved.init
    model = load_model(init)
    if not isinstance(model, ViT) and getattr(type(model), "family", "") != "swin":
        raise ValueError(f"{init} holds a {type(model).__name__}; fine-tuning starts from a ViT or a Swin")
    name, tuned, source, method = init, {}, init, "pretrained"
    if Run(init).exists():  # a vitlab run folder: keep its model name, and its recipe's augmentation and batch size
        start = Run(init).record()
        name, method = start.model.name, start.method
        tuned = {k: v for k, v in get_model(name).recipe.items()
                 if k in ("augment", "batch_size", "label_smoothing")} if name in model_names() else {}
        source = f"vitlab run {Run(init).name}"
    return model, name, tuned, InitRecord(spec=init, source=source, config=model.config.to_dict(), recipe=tuned,
                                          method=method)


class ClassifyTask(Task):
    """Train a classifier (a registered model, or a pretrained one fine-tuned) on a labelled image set."""

    name = "classify"

    def __init__(self, model: str | None, dataset: str, *, recipe_overrides: dict[str, Any] | None = None,
                 model_args: dict[str, Any] | None = None, seed: int = 0,
                 data_root: str | os.PathLike[str] | None = None, val_size: int | float = 0.1,
                 subset: int | None = None, test_subset: int | None = None,
                 classes: Sequence[str | int] | None = None, init: str | os.PathLike[str] | None = None,
                 image_size: int | None = None, resize: ResizeMode = "crop", stratify: bool = True,
                 label_noise: float = 0.0) -> None:
        overrides = {k: v for k, v in (recipe_overrides or {}).items() if v is not None}
        if "seed" in overrides and overrides["seed"] != seed:
            raise ValueError("pass the seed as train_run(seed=...), not in the recipe: one seed fixes everything")
        if init is not None and (model is not None or model_args):
            raise ValueError("with init (--init) the architecture comes from the pretrained model: pass no model "
                             "name (--model) and no model_args (--model-arg)")
        if init is None and model is None:
            raise ValueError("name a registered model, or a pretrained one to fine-tune (init / --init)")
        if image_size is not None and init is None:
            raise ValueError("image_size (--image-size) is for fine-tuning (init); a new model takes the "
                             "dataset's size")
        self.model_name = model  # type: ignore[assignment]  # set from init in prepare() when None
        self.dataset, self.overrides, self.model_args, self.seed = dataset, overrides, dict(model_args or {}), seed
        self.data = {"root": data_root, "val_size": val_size, "seed": seed,
                     "classes": list(classes) if classes is not None else None}
        # A folder of pictures is read with a resize mode and a split rule, recorded; a named dataset has neither.
        self.folder = {"resize": resize, "stratify": stratify} if dataset.startswith("folder:") else {}
        self.subset, self.test_subset, self.init, self.image_size = subset, test_subset, init, image_size
        if not 0.0 <= label_noise < 1.0:
            raise ValueError(f"label noise (--label-noise) is a fraction in [0, 1), got {label_noise}")
        self.label_noise = label_noise
        self.init_record: InitRecord | None = None

    def prepare(self, device: torch.device, resumed: Run | None) -> None:
        pretrained = None
        if self.init is not None:
            pretrained, self.model_name, base, self.init_record = _pretrained(str(self.init), resumed)
            finetune = PROBE_RECIPE if self.overrides.get("freeze") == "backbone" else FINETUNE_RECIPE
            self.config = TrainConfig.from_dict({**base, **finetune, **self.overrides, "seed": self.seed})
            preset = pretrained.config
        else:
            self.config = recipe(self.model_name, **{**self.overrides, "seed": self.seed})
            preset = model_config(self.model_name, **self.model_args)
        side = self.image_size or (preset.input_resolution if pretrained is not None else preset.image_size)
        self._load_data(side, preset.in_channels)
        channels, height, _ = self.train_set.image_shape
        seed_everything(self.seed)
        if pretrained is not None:
            if channels != pretrained.config.in_channels:
                raise ValueError(f"{self.init} takes {pretrained.config.in_channels}-channel images but "
                                 f"{self.dataset} has {channels} channels")
            # A new zero-initialized head for these classes; the position table resampled to image_size;
            # the dataset's images resized inside the model when their size differs.
            self.net = adapt(pretrained, image_size=self.image_size, input_size=height)
            self.net.reset_classifier(self.train_set.num_classes)  # always a new head: the classes are new
        else:
            # The dataset decides the input and output shapes; the preset (and model_args) decide the rest.
            self.net = create_model(self.model_name, **{"in_channels": channels, "image_size": height,
                                                        "num_classes": self.train_set.num_classes, **self.model_args})
        self.epochs, self.precision, self.input_shape = self.config.epochs, self.config.precision, (channels, height,
                                                                                                 height)
        self.train_n = len(self.train_set)

    def _load_data(self, side: int, channels: int) -> None:
        # Folder datasets are decoded at the size the model takes (named datasets have their own size).
        common = {**self.data, **self.folder, "image_size": side, "channels": channels}
        self.train_set = load_dataset(self.dataset, "train", subset=self.subset, label_noise=self.label_noise,
                                      **common)
        self.val_set = load_dataset(self.dataset, "val", **common)
        self.test_set = load_dataset(self.dataset, "test", subset=self.test_subset, **common)

    def plan_budget(self, budget_s: float, device: torch.device) -> BudgetPlan:
        # An explicit --epochs is the most a budget may plan.
        return budget_plan(self.net, self.train_set, self.val_set, self.config, budget_s, device,
                           max_epochs=self.overrides.get("epochs"))

    def record(self) -> RunConfig:
        data = dataset_record(self.train_set, self.val_set, self.test_set, name=self.dataset,
                              val_size=self.data["val_size"], subset=self.subset, test_subset=self.test_subset,
                              class_subset=self.data["classes"], label_noise=self.label_noise or None,
                              **self.folder)
        return RunConfig(model=ModelRecord(**model_spec(self.model_name, self.net)), dataset=data,
                         train=self.config.to_dict(), init=self.init_record)

    def trainer(self, device: torch.device, dist: DistContext, resuming: bool) -> Trainer:
        return ClassifierTrainer(self.net, self.train_set, self.val_set, self.config, device, dist)

    def test(self, trainer: Trainer, history: list[dict[str, Any]], dist: DistContext) -> dict[str, Any]:
        scored = trainer.weights()  # the weight average when the recipe keeps one (--ema-decay)
        result = evaluate(scored, self.test_set, self.config.eval_batch_size, dist=dist,
                          device=next(scored.parameters()).device, precision=self.config.precision)
        metrics = {"test_accuracy": result["accuracy"], "test_loss": result["loss"], "test_n": result["n"],
                   "per_class_accuracy": dict(zip(self.test_set.classes, result["per_class_accuracy"])),
                   "confusion": result["confusion"],
                   "final_val_accuracy": history[-1].get("val_accuracy") if history else None}
        report = getattr(scored, "test_report", None)  # a model's own measurements, e.g. early exits' curve
        if report is not None and dist.is_main:
            metrics.update(report(self.test_set, precision=self.config.precision))
        return metrics

    def figures(self, run: Run, trainer: Trainer, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        """``curves.png`` (loss and accuracy per epoch) and ``confusion.png`` (test confusion matrix)."""
        title = f"{self.model_name} on {self.dataset}"
        if history:
            _save(run, "curves.png", plot_history(history, title=title))
        accuracy = f"{title}: test accuracy {100 * metrics['test_accuracy']:.2f}%"
        _save(run, "confusion.png", plot_confusion(metrics["confusion"], self.test_set.classes, title=accuracy))

    def header(self) -> str:
        return (f"training {self.model_name} ({count_parameters(self.net):,} parameters) on {self.dataset}: "
                f"{len(self.train_set):,} train / {len(self.val_set):,} val / {len(self.test_set):,} test images, "
                f"precision {describe_precision(self.config.precision, next(self.net.parameters()).device)}")

    def headline(self, metrics: dict[str, Any]) -> str:
        return f"test accuracy: {100 * metrics['test_accuracy']:.2f}% on {metrics['test_n']:,} test images"


def _save(run: Run, name: str, fig: Any) -> None:
    atomic_write(run.path / name, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def train_run(model: str | None, dataset: str, out: str | os.PathLike[str], *, recipe: dict[str, Any] | None = None,
              model_args: dict[str, Any] | None = None, seed: int = 0, data_root: str | os.PathLike[str] | None = None,
              val_size: int | float = 0.1, subset: int | None = None, test_subset: int | None = None,
              classes: Sequence[str | int] | None = None, init: str | os.PathLike[str] | None = None,
              image_size: int | None = None, time_budget: float | None = None, resume: bool = False,
              device: str | torch.device | None = None, progress: bool = True, verbose: bool = True,
              command: str | None = None, experiment: str | None = None, resize: ResizeMode = "crop",
              stratify: bool = True, label_noise: float = 0.0) -> Run:
    """Train a registered model on a dataset, evaluate it on the test split, and return its :class:`Run`.

    ``model``: a registered name (:func:`vitlab.models.registry.model_names`; register a new architecture with
    :func:`~vitlab.models.registry.register_model` so that its run folder can be reloaded); ``model_args`` replace
    fields of its preset config (the dataset always sets ``in_channels``, ``image_size`` and ``num_classes``
    unless given). ``recipe``: :class:`~vitlab.engine.recipe.TrainConfig` fields replacing the model's tuned
    recipe (``None`` values are ignored). ``seed`` fixes the splits, the initialization and the data
    order. ``time_budget`` (seconds) plans the number of epochs from a measured step time (an explicit
    ``recipe["epochs"]`` is then the most it may run). ``resume`` continues the run in ``out`` from its
    last finished epoch (a finished run is only re-evaluated); without it, an existing run is an error.
    Interrupted with Ctrl-C, it raises ``KeyboardInterrupt`` after the last finished epoch was saved.

    ``classes`` (names or indices) trains on those classes of the dataset only (relabelled in that order).
    ``experiment`` names the comparison the run belongs to (recorded in ``config.json``; the report
    gives each experiment its own section). ``resize`` and ``stratify`` are how a ``folder:PATH`` dataset is
    read (:func:`vitlab.data.load_image_folder`), recorded so that the run reloads exactly its own data.
    ``label_noise`` gives that fraction of the training images a wrong label (:func:`vitlab.data.noisy_labels`,
    seeded by ``seed``; validation and test keep the true ones), recorded in the run's dataset entry.

    Fine-tuning: ``init`` is a run folder or any pretrained spec (:func:`vitlab.runfolder.load_model`:
    a weights file, ``timm:NAME``, ...); the architecture and weights come from it (``model`` is then ``None``),
    with a new zero-initialized head for the dataset's classes. ``image_size`` sets the resolution the
    model runs at (its position table resampled; default the checkpoint's); images of another size
    are resized to it inside the model. The recipe starts from :data:`~vitlab.engine.recipe.FINETUNE_RECIPE`
    (:data:`~vitlab.engine.recipe.PROBE_RECIPE` with ``freeze="backbone"``) over the pretrained model's own
    recipe where it has one. ``resume`` rebuilds the model from the run folder, so the pretrained
    weights are not needed again once the first epoch is saved.
    """
    task = ClassifyTask(model, dataset, recipe_overrides=recipe, model_args=model_args, seed=seed,
                        data_root=data_root, val_size=val_size, subset=subset, test_subset=test_subset,
                        classes=classes, init=init, image_size=image_size, resize=resize, stratify=stratify,
                        label_noise=label_noise)
    return drive(task, out, resume=resume, time_budget=time_budget, device=device, progress=progress,
                 verbose=verbose, command=command, experiment=experiment)
