"""A run folder, read and written by one class (:class:`Run`), and the one way to get a model from a run folder
or a pretrained spec (:func:`load_model`).

Every run folder has the same files, whatever the task::

    config.json         what ran: task, method, model (name, family, config), recipe, dataset, command line
    model.safetensors   weights (safetensors: loading cannot run code)
    checkpoint.pt       resumable state: optimizer, scheduler, RNG, history (loaded with weights_only)
    history.csv         one row per epoch
    metrics.json        test results and the run's envelope: parameters, FLOPs, time, device, precision, ...
    *.png               the task's figures

Every file is written atomically (a crash never leaves half a file). Reading a missing or corrupt
file raises :class:`RunError` naming the file, never returns an empty result. The two JSON files have
a typed schema (:mod:`vitlab.runfolder.schema`): :meth:`Run.record` and :meth:`Run.summary`.

The drivers that make run folders are a floor up, in :mod:`vitlab.engine`.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.configs import ConfigError
from ..core.io import (
    CheckpointError,
    atomic_write,
    load_state,
    load_weights,
    save_json,
    save_state,
    save_weights,
    unwrap,
)
from ..core.precision import recorded_precision
from ..data.datasets import ImageTensorDataset, canonical_name, load_dataset
from ..models import convert
from ..models.registry import build_model
from .schema import RunConfig, RunMetrics, source_kind

__all__ = ["Run", "RunError", "load_model", "model_spec", "model_from_spec", "command_line", "device_name",
           "source_kind"]


class RunError(CheckpointError):
    """A run folder or one of its files is missing, corrupt, or not what the command needs."""


def model_spec(name: str, model: nn.Module) -> dict[str, Any]:
    """The ``model`` entry of ``config.json``: the registered name, the family, and every config field."""
    model = unwrap(model)
    family = getattr(type(model), "family", None)
    if family is None or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} is not a registered vitlab model family (see vitlab.models.registry)")
    return {"name": name, "family": family, "config": model.config.to_dict()}


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) model from its ``config.json`` entry (see :func:`model_spec`)."""
    try:
        family, fields = spec["family"], spec["config"]
    except (KeyError, TypeError):
        raise RunError(f"config.json has no usable 'model' entry (need 'family' and 'config'): {spec!r}") from None
    try:
        return build_model(family, fields)
    except (TypeError, ValueError) as error:
        raise RunError(f"config.json describes an invalid {family} model: {error}") from None


def command_line() -> str:
    """This process's command line, as ``vitlab ...`` (for the record in config.json / metrics.json)."""
    return " ".join(shlex.quote(a) for a in ["vitlab", *sys.argv[1:]])


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name, e.g. ``AMD EPYC`` (Linux reads ``cpuinfo``'s first ``model name``; elsewhere
    ``platform.processor()``), or ``None`` when nothing names it. Budgeted runs depend on it: the same
    budget gives 2-3x more steps on one 2-core machine than on another."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    name = platform.processor()
    return name if name and name != platform.machine() else None


def device_name(device: torch.device) -> str:
    """The device for the record: ``cuda (NVIDIA H200)``, ``cpu (2 cores, AMD EPYC, x86_64)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = cpu_model()
    return f"cpu ({os.cpu_count()} cores, {model + ', ' if model else ''}{platform.machine()})"


def _same_name(a: str | None, b: str | None) -> bool:
    """Whether two dataset names mean the same dataset (aliases like ``CIFAR-10``; folder paths resolved)."""
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
        """``config.json`` as stored: ``{"model", "train", "dataset", "command", ...}`` (:meth:`record`: typed)."""
        return self._read_json(self.CONFIG)

    def record(self) -> RunConfig:
        """``config.json`` read into a :class:`~vitlab.runfolder.schema.RunConfig`; a file that does not fit the
        schema is a :class:`RunError` naming it."""
        try:
            return RunConfig.from_dict(self.config())
        except (ConfigError, TypeError) as error:
            raise RunError(f"{self.path / self.CONFIG} is not a valid run config: {error}") from None

    def summary(self) -> RunMetrics:
        """``metrics.json`` read into a :class:`~vitlab.runfolder.schema.RunMetrics`."""
        try:
            return RunMetrics.from_dict(self.metrics())
        except (ConfigError, TypeError) as error:
            raise RunError(f"{self.path / self.METRICS} is not a valid metrics file: {error}") from None

    def evaluation_precision(self) -> str:
        """The precision to re-evaluate this run in (:func:`vitlab.precision.recorded_precision`: fp32 for a
        run that computed in fp32), from its config and, when it finished and is readable, its metrics."""
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
        record = self.record()
        data, fields = record.dataset, record.model.config
        if record.task in ("segment", "detect"):
            raise RunError(f"{self.path} is a {record.task} run: its data are canvases (vitlab.data.canvas.load_canvas "
                           "with the run's canvas settings), not a labelled image set")
        dataset_name = name or data.name
        own = _same_name(dataset_name, data.name)
        side = fields.get("input_size") or fields.get("image_size")  # the size of the images the model takes
        recorded_subset = {"train": data.subset, "test": data.test_subset}.get(split)
        # A folder dataset is read as it was: its resize mode and split rule (runs recorded before these existed
        # squashed their pictures and split at random).
        folder = {"resize": data.resize or "squash", "stratify": bool(data.stratify)} if own else {}
        # The training split with the labels it was trained on (a run with label noise: the same wrong ones).
        noise = data.label_noise if own and split == "train" and data.label_noise else 0.0
        dataset = load_dataset(dataset_name, split, root=root, val_size=data.val_size,
                               subset=subset if subset is not None or not own else recorded_subset,
                               seed=record.seed, image_size=side, channels=fields.get("in_channels"),
                               classes=data.class_subset if own else None, label_noise=noise, **folder)
        if name is None and subset is None and not self.is_own_data(dataset):
            raise RunError(f"{self.path} was made with {getattr(data, f'{split}_n', None)} {split} images of "
                           f"{data.name} ({data.source or 'source not recorded'}), but {len(dataset)} load now from "
                           f"{dataset.source or dataset.name}: the data folder holds another copy. Name the dataset "
                           "explicitly to evaluate on it (vitlab evaluate --dataset NAME), which records the result "
                           "under its own keys")
        return dataset

    def is_own_data(self, dataset: ImageTensorDataset) -> bool:
        """Whether ``dataset`` is the split the run recorded: same dataset name, and the same size and
        source where those were recorded."""
        data = self.record().dataset
        if not _same_name(dataset.name, data.name):
            return False
        recorded_n = getattr(data, f"{dataset.split}_n", None)
        if recorded_n is not None and recorded_n != len(dataset):
            return False
        recorded_source, source = data.source, getattr(dataset, "source", "")
        return not (recorded_source and source and source_kind(recorded_source) != source_kind(source))

    # ------------------------------------------------------------------ writing
    def write_config(self, config: dict[str, Any] | RunConfig) -> Path:
        """Write ``config.json`` (a :class:`RunConfig` is checked by being one; a dict is checked against it)."""
        record = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        return save_json(self.path / self.CONFIG, record.to_dict())

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        return save_json(self.path / self.METRICS, metrics)

    def write_history(self, history: Sequence[dict[str, Any]], fields: Sequence[str]) -> Path:
        """``history.csv``: one row per epoch, the columns ``fields`` (each task has its own)."""
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


def _open_run(path: Path) -> nn.Module:
    return Run(path).model()


def load_model(spec: str | os.PathLike[str], num_classes: int | None = None, image_size: int | None = None,
               input_size: int | None = None, *, heads: int | None = None,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """The one resolver of "a run folder or a pretrained spec", in eval mode on ``map_location``: a vitlab run
    folder (any family: the trained model), or anything :func:`vitlab.models.convert.load` takes
    (``timm:NAME``, ``torchvision:NAME``, ``hf:REPO_ID``, a weights file, a Hugging Face folder).
    ``num_classes``, ``image_size`` and ``input_size`` adapt a ViT to a new task
    (:func:`~vitlab.models.convert.adapt`); without them a run folder's model comes back as trained."""
    path = Path(spec).expanduser()
    if path.is_dir() and convert.is_run_folder(path) and num_classes is image_size is input_size is None:
        return Run(path).model(map_location)
    model = convert.load(str(spec), num_classes, image_size, input_size, heads=heads, open_run=_open_run)
    return model.to(map_location)
