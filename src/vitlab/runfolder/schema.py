"""The run folder's two JSON files, typed: :class:`RunConfig` (``config.json``) and :class:`RunMetrics`
(``metrics.json``).

Every task writes the same layout and every reader (:class:`~vitlab.runfolder.run.Run`, ``vitlab
evaluate``, resume, the report) reads it through these classes instead of nested string keys::

    config.json   {"task", "method", "model": {name, family, config}, "train" | "dino": recipe,
                   "dataset": {name, source, sizes, classes, mean, std, ...}, "init", "experiment",
                   "time_budget_s", "views", "command"}
    metrics.json  {the envelope every task writes (model, dataset, seed, epochs, params, flops, times,
                   device, precision, versions, command), then the task's own numbers}

Runs recorded before these classes existed read as before: a missing ``task`` is ``classify`` (or
``pretrain`` for a DINO run, whose ``method`` says ``dino``); their JSON files are not rewritten.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.configs import Config, ConfigError

__all__ = ["ModelRecord", "DatasetRecord", "InitRecord", "RunConfig", "RunMetrics", "TASKS", "METHODS",
           "source_kind"]

Task = Literal["classify", "segment", "detect", "pretrain"]
Method = Literal["supervised", "dino"]
TASKS: tuple[str, ...] = ("classify", "segment", "detect", "pretrain")
METHODS: tuple[str, ...] = ("supervised", "dino")


@dataclass
class ModelRecord(Config):
    """The ``model`` entry: the registered name, the family, and every field of its config."""

    name: str
    family: str
    config: dict[str, Any]


@dataclass
class DatasetRecord(Config):
    """The ``dataset`` entry: which data, which copy of it (``source``, without the folder it was found
    in), the split and its sizes, the classes and the normalization statistics."""

    name: str
    train_n: int | None = None
    val_n: int | None = None
    test_n: int | None = None
    classes: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    source: str = ""
    val_size: float | int = 0.1
    subset: int | None = None
    test_subset: int | None = None
    class_subset: list[str | int] | None = None
    canvas: dict[str, Any] | None = None
    resize: str | None = None       # a folder dataset's resize mode (vitlab.data.fit_image); older runs: squash
    stratify: bool | None = None    # whether a folder dataset's splits kept each class's share; older runs: no
    label_noise: float | None = None  # the fraction of training labels made wrong on purpose (noisy_labels)

    def identity(self) -> dict[str, Any]:
        """What must not change under a resumed run: the data's name, copy, sizes, classes and canvases
        (``source`` without its folder: the same copy found elsewhere is the same data; canvases are named by
        their settings, and their source only says whether they were built or read from the cache)."""
        from_source = {"source": source_kind(self.source)} if self.source and self.canvas is None else {}
        keys = ("name", "train_n", "val_n", "test_n", "class_subset", "canvas", "resize", "stratify", "label_noise")
        return {**{k: getattr(self, k) for k in keys if getattr(self, k) is not None}, **from_source}


@dataclass
class InitRecord(Config):
    """The ``init`` entry of a run that started from other weights: the spec it was given, where they came
    from, how they were trained (``method``: a run folder's, e.g. ``dino``; ``pretrained`` for a published
    checkpoint), the architecture as it was, and (fine-tuning) the recipe fields taken from it."""

    spec: str
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    method: str = ""


@dataclass
class RunConfig(Config):
    """``config.json``. ``train`` holds a :class:`~vitlab.engine.train.TrainConfig`'s fields (classification,
    segmentation, detection), ``dino`` a :class:`~vitlab.engine.dino.DinoConfig`'s (pretraining);
    ``budget_plan`` what a time budget's probe measured and planned (:class:`~vitlab.engine.budget.BudgetPlan`)."""

    model: ModelRecord
    dataset: DatasetRecord
    task: Task = "classify"
    method: Method = "supervised"
    train: dict[str, Any] | None = None
    dino: dict[str, Any] | None = None
    init: InitRecord | None = None
    experiment: str | None = None
    time_budget_s: float | None = None
    budget_plan: dict[str, Any] | None = None
    views: dict[str, Any] | None = None
    command: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.train is None) == (self.dino is None):
            raise ConfigError("a run's config.json holds one recipe: 'train' or 'dino'")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Read ``config.json`` (strict: an unknown key is an error naming it); older runs read as described
        in the module docstring."""
        if not isinstance(values, dict):
            raise ConfigError(f"config.json must hold a JSON object, got {type(values).__name__}")
        values = dict(values)
        if "task" not in values:
            values["task"] = "pretrain" if values.get("method") == "dino" else "classify"
        for key, record in (("model", ModelRecord), ("dataset", DatasetRecord), ("init", InitRecord)):
            if isinstance(values.get(key), dict):
                values[key] = record.from_dict(values[key])
        return super().from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout, leaving out what a run does not have (``None``)."""
        out = {"task": self.task, "method": self.method, "model": self.model.to_dict()}
        out.update({k: v for k, v in (("train", self.train), ("dino", self.dino)) if v is not None})
        out["dataset"] = {k: v for k, v in self.dataset.to_dict().items() if v is not None}
        if self.init is not None:
            out["init"] = self.init.to_dict()
        out.update({k: getattr(self, k) for k in ("experiment", "time_budget_s", "budget_plan", "views")
                    if getattr(self, k) is not None})
        out["command"] = self.command
        return out

    @property
    def recipe(self) -> dict[str, Any]:
        """The recorded recipe: the ``train`` or the ``dino`` section."""
        return self.train if self.train is not None else self.dino  # type: ignore[return-value]

    @property
    def seed(self) -> int:
        return int(self.recipe.get("seed", 0))

    @property
    def is_feature_extractor(self) -> bool:
        """A backbone without a classifier (a DINO run, or any model built with ``num_classes=0``)."""
        return self.task == "pretrain" or self.model.config.get("num_classes") == 0

    def comparable(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues: task, method, model, start, recipe
        section name and the data's :meth:`~DatasetRecord.identity` (the recipe itself is compared field by
        field by the task, which knows which fields only change the speed)."""
        return {"task": self.task, "method": self.method, "model": self.model.to_dict(),
                "init": None if self.init is None else dataclasses.replace(self.init, source="", method="").to_dict(),
                "recipe": "train" if self.train is not None else "dino", "dataset": self.dataset.identity()}


#: The envelope every task writes into ``metrics.json``; the rest of the file is the task's own numbers.
_ENVELOPE = ("task", "model", "dataset", "seed", "epochs", "params", "trainable_params", "flops", "train_time_s",
             "wall_time_s", "device", "world_size", "precision", "torch", "python", "command", "time_budget_s",
             "train_n", "test_n", "recipe", "resumed_from", "evaluated_with")


@dataclass
class RunMetrics(Config):
    """``metrics.json``: the envelope (what ran, where, how long) and the task's results in ``results``
    (e.g. ``test_accuracy``, ``per_class_accuracy``, ``confusion``; ``test_miou``; ``knn_test_accuracy``;
    an evaluation on another dataset under its own keys such as ``fashion-mnist_test_accuracy``)."""

    model: str
    dataset: str
    seed: int
    epochs: int
    params: int
    flops: int
    train_time_s: float
    device: str
    torch: str
    command: str
    task: str = "classify"
    trainable_params: int | None = None
    wall_time_s: float | None = None
    world_size: int = 1
    precision: str | None = None
    python: str | None = None
    time_budget_s: float | None = None
    train_n: int | None = None
    test_n: int | None = None
    recipe: dict[str, Any] | None = None
    resumed_from: str | None = None
    evaluated_with: str | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunMetrics:
        """Read ``metrics.json``: the envelope's keys become fields, every other key a result."""
        if not isinstance(values, dict):
            raise ConfigError(f"metrics.json must hold a JSON object, got {type(values).__name__}")
        envelope = {k: v for k, v in values.items() if k in _ENVELOPE}
        if "task" not in envelope:
            envelope["task"] = "pretrain" if values.get("method") == "dino" else "classify"
        return cls(**envelope, results={k: v for k, v in values.items() if k not in _ENVELOPE})

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON layout: the task's results first, then the envelope (``None`` left out)."""
        envelope = {k: getattr(self, k) for k in _ENVELOPE if getattr(self, k) is not None}
        return {**self.results, **envelope}

    def __getitem__(self, key: str) -> Any:
        """``metrics["test_accuracy"]`` reads a result or an envelope field alike."""
        if key in self.results:
            return self.results[key]
        if key in _ENVELOPE and getattr(self, key) is not None:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @property
    def resolved_precision(self) -> str:
        """``fp32`` or ``bf16``: what the run computed in (runs recorded before precision existed: fp32
        on CPUs, bf16 on CUDA, which is what their ``amp`` flag did)."""
        if self.precision:
            return "bf16" if self.precision.startswith("bf16") else "fp32"
        return "bf16" if self.device.startswith("cuda") else "fp32"


def source_kind(source: str) -> str:
    """Which copy of a dataset a ``source`` string names, without the folder it was found in:
    ``"cifar10-jpg at /data/cifar10-jpg (full)"`` -> ``"cifar10-jpg (full)"``."""
    return re.sub(r" at \S+", "", source or "")
