"""The one run driver: every task (classification, segmentation and detection, DINO pretraining) makes its run
folder through :func:`drive`, in the shape of torchvision's reference ``main`` and DINO's ``train_dino``.

:func:`drive` does what every run shares, once: refuse to overwrite a run, load the data and build the
model (the task's :meth:`Task.prepare`), fit the run to a wall-clock budget (one planner,
:mod:`vitlab.engine.budget`) or keep the plan of the run it resumes, write ``config.json`` and compare it
with the recorded one on resume (model, start, recipe and the data's identity), print the header, train
through the shared epoch loop (:func:`vitlab.engine.loop.run_epochs`, DDP under ``torchrun``), test, and
write ``metrics.json`` (one envelope for every task) and the figures.

A :class:`Task` supplies only what differs: its data and model, its probe step, its
:class:`~vitlab.engine.loop.Trainer`, its test metrics, its figures and its one-line result.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.configs import ConfigError
from ..core.precision import describe_precision
from ..core.runtime import pick_device
from ..models.measure import count_flops, count_parameters
from ..runfolder.run import Run, RunError, command_line, device_name
from ..runfolder.schema import RunConfig, RunMetrics
from .budget import BudgetPlan, apply_plan, replan_epochs
from .loop import DistContext, Trainer, run_epochs
from .recipe import recipe_differences

__all__ = ["Task", "drive", "check_time_budget", "takes_second_look"]


class Task(ABC):
    """One kind of run. :meth:`prepare` sets ``model_name``, ``net`` (the model), ``train_n`` and the recipe;
    the driver then asks for the rest in this order:
    :meth:`plan_budget` (with a time budget), :meth:`record`, :meth:`recipe_differences` (on resume),
    :meth:`trainer`, :meth:`test`, :meth:`figures`, :meth:`headline`."""

    name: str = "classify"          # config.json's task
    config: Any                     # the recipe: a TrainConfig, a DinoConfig
    net: nn.Module
    model_name: str
    epochs: int
    precision: str = "fp32"         # the recipe's precision (auto, fp32, bf16)
    input_shape: tuple[int, ...]    # one image (C, H, W), for the FLOP count
    train_n: int

    @abstractmethod
    def prepare(self, device: torch.device, resumed: Run | None) -> None:
        """Load the data and build the (seeded) model; ``resumed`` is the run being resumed, if any."""

    @abstractmethod
    def plan_budget(self, budget_s: float, device: torch.device) -> BudgetPlan:
        """Plan the run for ``budget_s`` seconds: :func:`vitlab.engine.budget.plan_steps` with a training step
        on a copy of the model (probing must not change the run)."""

    def apply_plan(self, plan: BudgetPlan) -> None:
        """Take the planned length into the recipe (:func:`vitlab.engine.budget.apply_plan`)."""
        self.config = apply_plan(self.config, plan)
        self.epochs = self.config.epochs

    def restore_plan(self, saved: RunConfig) -> None:
        """A resumed budget run keeps the recipe it was planned with."""
        self.config = type(self.config).from_dict(saved.recipe)
        self.epochs = self.config.epochs

    @abstractmethod
    def record(self) -> RunConfig:
        """``config.json`` (the driver adds the experiment, the budget and the command)."""

    def recipe_differences(self, saved: RunConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (saved, now)}``: what this command would change in the recorded recipe, leaving out the
        fields that only change the speed (:data:`~vitlab.engine.recipe.SPEED_ONLY_FIELDS`)."""
        return recipe_differences(saved.recipe, self.config)

    @abstractmethod
    def trainer(self, device: torch.device, dist: DistContext, resuming: bool) -> Trainer:
        """The task's training state for the epoch loop."""

    @abstractmethod
    def test(self, trainer: Trainer, history: list[dict[str, Any]], dist: DistContext) -> dict[str, Any]:
        """The test results for ``metrics.json`` (every rank calls it; rank 0's are written)."""

    def figures(self, run: Run, trainer: Trainer, history: list[dict[str, Any]],  # noqa: B027 (optional)
                metrics: dict[str, Any]) -> None:
        """Draw the task's figures into the run folder (none by default)."""

    @abstractmethod
    def header(self) -> str:
        """What trains on what, printed before training."""

    @abstractmethod
    def headline(self, metrics: dict[str, Any]) -> str:
        """The result in one line, printed at the end."""


def check_time_budget(time_budget: float | None) -> None:
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time budget must be a positive number of seconds, got {time_budget}")
    if time_budget is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--time-budget measures one process; under torchrun pass --epochs instead")


def _plan(task: Task, saved: RunConfig | None, time_budget: float, device: torch.device,
          verbose: bool) -> BudgetPlan | None:
    if saved is not None:  # a resumed run keeps the plan it was started with
        task.restore_plan(saved)
        return None
    plan = task.plan_budget(time_budget, device)
    task.apply_plan(plan)
    if verbose:
        print(f"time budget {time_budget:.0f} s: {plan.describe()}", flush=True)
    return plan


def _check_resume(run: Run, saved: RunConfig, record: RunConfig, task: Task) -> None:
    """One comparison for every task: task, method, model, start, the data's identity, then the recipe."""
    before, now = saved.comparable(), record.comparable()
    for key in before:
        if before[key] != now[key]:
            raise RunError(f"cannot resume {run.path}: its {key} differs from this command's "
                           f"(saved {before[key]} vs now {now[key]})")
    try:
        diff = task.recipe_differences(saved)
    except ConfigError as error:
        raise RunError(f"cannot resume {run.path}: its recipe is not valid here: {error}") from None
    if diff:
        raise RunError(f"cannot resume {run.path}: its recipe differs from this command's (field: (saved, now)) {diff}")


def _previous_metrics(run: Run) -> dict[str, Any] | None:
    if not run.is_finished():
        return None
    try:
        return run.metrics()
    except RunError as error:  # re-evaluating rewrites it: a damaged file must not block the repair
        warnings.warn(f"{error}; it will be rewritten", stacklevel=3)
        return None


def _envelope(task: Task, history: list[dict[str, Any]], device: torch.device, dist: DistContext,
              started: float, time_budget: float | None, command: str, previous: dict[str, Any] | None,
              record: RunConfig) -> RunMetrics:
    net = task.net
    return RunMetrics(
        task=task.name, model=task.model_name, dataset=record.dataset.name, seed=record.seed, epochs=len(history),
        params=count_parameters(net, trainable_only=False), trainable_params=count_parameters(net),
        flops=count_flops(net, task.input_shape), train_time_s=round(sum(r["epoch_time_s"] for r in history), 2),
        wall_time_s=round(time.perf_counter() - started, 2), device=device_name(device), world_size=dist.world_size,
        precision=describe_precision(task.precision, device), torch=torch.__version__,
        python=platform.python_version(), command=command, time_budget_s=time_budget, train_n=task.train_n,
        recipe=record.recipe, resumed_from=previous.get("command") if previous else None)


def drive(task: Task, out: str | os.PathLike[str], *, resume: bool = False, time_budget: float | None = None,
          device: str | torch.device | None = None, progress: bool = True, verbose: bool = True,
          command: str | None = None, experiment: str | None = None) -> Run:
    """Make the run folder ``out`` for ``task`` and return its :class:`~vitlab.runfolder.Run`.

    ``resume`` continues the run in ``out`` from its last finished epoch (a finished run is only re-tested);
    without it, an existing run is an error. ``time_budget`` (seconds) plans the number of epochs from a
    measured step. Interrupted with Ctrl-C, it raises ``KeyboardInterrupt`` after the last finished epoch was
    saved."""
    run = Run(out)
    if not resume and run.has_state():
        raise RunError(f"{run.path} already holds a run: pass --resume (resume=True) to continue it, "
                       "or choose another output folder")
    check_time_budget(time_budget)
    command = command or command_line()
    dist = DistContext.from_env(pick_device(None if device is None else str(device)).type)
    device = dist.place(pick_device(None if device is None else str(device)))
    saved = run.record() if resume and run.exists() else None
    task.prepare(device, run if resume else None)
    plan = _plan(task, saved, time_budget, device, verbose) if time_budget is not None else None
    # The plan's measurements are kept (a plan made while the machine was busy shows in its step time).
    measured = dataclasses.asdict(plan) if plan is not None else saved.budget_plan if saved is not None else None

    def make_record(measured: dict[str, Any] | None) -> RunConfig:
        return dataclasses.replace(task.record(), experiment=experiment, time_budget_s=time_budget, command=command,
                                   budget_plan=measured)

    record = make_record(measured)
    if saved is not None:
        _check_resume(run, saved, record, task)
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(record)
        if verbose:
            print(task.header() + f", device {device}" + (f", {dist.world_size} processes" if dist.enabled else ""),
                  flush=True)
    previous = _previous_metrics(run) if resume else None
    started = time.perf_counter()
    trainer = task.trainer(device, dist, resuming=resume and run.has_state())
    report = None if progress or not verbose or not dist.is_main else _epoch_line(task)
    replan = None
    if plan is not None and time_budget is not None and takes_second_look(plan, task.config, dist):
        replan = _replanner(task, trainer, plan, time_budget, lambda new: run.write_config(make_record(new)), verbose)
    history = run_epochs(trainer, task.epochs, run=run, resume=resume, device=device, dist=dist, progress=progress,
                         on_epoch_end=report, after_first_epoch=replan)
    if replan is not None:  # metrics.json's recipe is the one the run trained with, after the second look
        record = run.record()
    results = task.test(trainer, history, dist)
    if not dist.is_main:
        return run
    metrics = {**results, **_envelope(task, history, device, dist, started, time_budget, command, previous,
                                      record).to_dict()}
    run.write_metrics(metrics)
    task.figures(run, trainer, history, metrics)
    if verbose:
        print(f"{task.headline(metrics)} (train time {metrics['train_time_s']:.0f} s)\nrun saved in {run.path}")
    return run


def takes_second_look(plan: BudgetPlan, config: Any, dist: DistContext) -> bool:
    """Whether a budget run re-plans after its first epoch: only a plan of whole epochs (a shortened or
    partial epoch is already the most that fits), never a compiled run (its first epoch also pays the
    compilation, so it would misjudge the epochs after it), and one process only (each rank would time its
    own epoch; ``--time-budget`` is refused under ``torchrun`` anyway)."""
    return plan.whole_epochs and not getattr(config, "compile", False) and not dist.enabled


def _replanner(task: Task, trainer: Trainer, plan: BudgetPlan, budget_s: float,
               write_config: Callable[[dict[str, Any]], None], verbose: bool) -> Callable[[dict[str, Any]], int]:
    """The budget's second look, after the first epoch: as many epochs as that epoch's measured time fits
    (:func:`~vitlab.engine.budget.replan_epochs`), taken where the trainer can change its length exactly
    (:meth:`Trainer.set_epochs`), then recorded in ``config.json`` (its plan keeps the probe's numbers, the
    first epoch's seconds and the probe's epoch count, whether the length changed or not). Returns the run's
    length from then on."""
    def after_first_epoch(row: dict[str, Any]) -> int:
        first_s = row["epoch_time_s"]
        epochs = replan_epochs(budget_s, first_s, plan.max_epochs)
        if epochs == task.epochs:
            kept, outcome = epochs, f"the plan of {epochs} epoch(s) stands"
        elif trainer.set_epochs(epochs):
            kept, outcome = epochs, f"re-planned from {task.epochs} to {epochs} epoch(s)"
        else:
            kept, outcome = task.epochs, (f"{epochs} epoch(s) would fit, but the run keeps {task.epochs}: its "
                                          "schedule so far depends on its length")
        replanned = plan.replanned(kept, first_s)
        task.apply_plan(replanned)
        write_config(dataclasses.asdict(replanned))  # the first epoch's seconds are kept whatever the outcome
        if verbose:
            tqdm.write(f"time budget {budget_s:.0f} s, first epoch {first_s:.1f} s: {outcome}")
        return kept
    return after_first_epoch


def _epoch_line(task: Task) -> Callable[[dict[str, Any]], None]:
    """Without progress bars, one line per epoch: its number (of the run's length now: the budget's re-plan may
    change it after the first), time and the losses and scores it recorded."""
    def report(row: dict[str, Any]) -> None:
        shown = [f"{k} {v:.4f}" for k, v in row.items() if k.endswith(("loss", "accuracy", "miou", "map", "map_50"))]
        print(f"epoch {row['epoch']}/{task.epochs} ({row['epoch_time_s']:.0f} s): " + ", ".join(shown), flush=True)
    return report
