"""Fitting a run to a wall-clock budget: time a few training steps, then choose how many epochs (or steps of
one epoch) fit. One planner for every task; each task hands it a ``step()`` that fetches a batch and trains
on it, and the seconds its per-epoch evaluation costs.

A few steps are a noisy measure of a whole run (the same recipe on the same idle machine has measured
0.073 and 0.118 s a step), so a plan of whole epochs is checked once more after the first epoch, from that
epoch's own time (:func:`replan_epochs`); the driver applies the new length where the schedule so far does
not depend on it (the first epoch was all warm-up).

The probe runs inside :func:`torch.random.fork_rng`, so measuring never changes the random numbers the
run then draws; the task restores any weights the probe touched.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

ConfigT = TypeVar("ConfigT")

__all__ = ["BudgetPlan", "apply_plan", "plan_budget", "plan_steps", "replan_epochs", "time_steps"]


@dataclass(frozen=True)
class BudgetPlan:
    """How long a run may train: ``epochs`` of ``steps_per_epoch`` steps (``None``: whole epochs), from a
    measured ``step_s`` seconds per step and ``eval_s`` per evaluation; ``short`` when not even one full
    epoch fits (the warmup is then cut to a tenth of that epoch); ``max_epochs``, the most it may plan (an
    explicit ``--epochs``). After a re-plan (:meth:`replanned`), ``first_epoch_s`` is the first epoch's
    measured seconds and ``probe_epochs`` what the probe alone had planned."""

    epochs: int
    steps_per_epoch: int | None
    step_s: float
    eval_s: float
    short: bool = False
    max_epochs: int | None = None
    first_epoch_s: float | None = None
    probe_epochs: int | None = None

    @property
    def whole_epochs(self) -> bool:
        """Whether the plan is a number of full epochs (the only kind a first epoch can re-plan)."""
        return self.steps_per_epoch is None and not self.short

    def replanned(self, epochs: int, first_epoch_s: float) -> BudgetPlan:
        """This plan after its first epoch took ``first_epoch_s`` seconds and left room for ``epochs``."""
        return dataclasses.replace(self, epochs=epochs, first_epoch_s=first_epoch_s, probe_epochs=self.epochs)

    def describe(self) -> str:
        steps = f" of {self.steps_per_epoch} steps" if self.steps_per_epoch else ""
        return f"{self.epochs} epoch(s){steps} ({self.step_s:.3f} s per step measured)"


def time_steps(step: Callable[[], None], probe_steps: int = 6, warmup_steps: int = 2,
               device: torch.device | None = None) -> tuple[float, float]:
    """Run ``step`` ``warmup_steps + probe_steps`` times; return the median seconds of the timed steps and the
    seconds the untimed first steps took (they pay one-off costs: allocation, compilation). On CUDA each step
    waits for the device, so the clock measures the work, not its queueing."""
    devices = [device] if device is not None and device.type == "cuda" else []
    timings, first_s = [], 0.0
    with torch.random.fork_rng(devices=devices):
        for index in range(warmup_steps + probe_steps):
            started = time.perf_counter()
            step()
            if devices:
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            if index < warmup_steps:
                first_s += elapsed
            else:
                timings.append(elapsed)
    return sorted(timings)[len(timings) // 2], first_s


def plan_budget(budget_s: float, steps_per_epoch: int, step_s: float, eval_s: float,
                max_epochs: int | None = None) -> BudgetPlan:
    """The plan for ``budget_s`` seconds, one evaluation per epoch counted in:

    * as many whole epochs as fit, at most ``max_epochs`` (rounding down wastes at most a quarter of the
      budget once three or more fit);
    * between one and three: rounded up, every epoch shortened to fit (each epoch then sees a fresh
      shuffled part of the data, and rounding down does not throw away up to half the budget);
    * less than one: one epoch of as many steps as fit.
    """
    if not budget_s > 0:
        raise ValueError(f"time budget must be a positive number of seconds, got {budget_s}")
    if steps_per_epoch <= 0 or not step_s > 0:
        raise ValueError(f"cannot plan {steps_per_epoch} steps of {step_s} s")
    fits = budget_s / (steps_per_epoch * step_s + eval_s)  # epochs that fit, fractional
    if max_epochs is not None and fits >= max_epochs:
        return BudgetPlan(max_epochs, None, step_s, eval_s, max_epochs=max_epochs)
    if fits >= 3:
        return BudgetPlan(int(fits), None, step_s, eval_s, max_epochs=max_epochs)
    if fits >= 1:
        epochs = math.ceil(fits)
        steps = int((budget_s - epochs * eval_s) // (epochs * step_s))
        return BudgetPlan(epochs, min(max(1, steps), steps_per_epoch), step_s, eval_s, max_epochs=max_epochs)
    steps = max(1, int((budget_s - eval_s) // step_s))
    return BudgetPlan(1, min(steps, steps_per_epoch), step_s, eval_s, short=True, max_epochs=max_epochs)


def replan_epochs(budget_s: float, first_epoch_s: float, max_epochs: int | None = None) -> int:
    """How many epochs fit in ``budget_s`` seconds of training (a run's ``train_time_s``: its epochs, each
    with its validation), measured after the first took ``first_epoch_s``: as many whole epochs of that
    length as fit, at least the one already run and at most ``max_epochs``. The first epoch also paid the
    run's one-off costs, which errs short, but later epochs may run slower than it, which errs long: the
    recorded runs overshot by 3-7 % (620 s of 600, 3,836 s of 3,600)."""
    if not budget_s > 0 or not first_epoch_s > 0:
        raise ValueError(f"cannot re-plan a {budget_s} s budget from a first epoch of {first_epoch_s} s")
    epochs = max(1, int(budget_s // first_epoch_s))
    return epochs if max_epochs is None else min(epochs, max_epochs)


def plan_steps(step: Callable[[], None], steps_per_epoch: int, budget_s: float,
               eval_seconds: Callable[[float], float] | float = 0.0, *, max_epochs: int | None = None,
               device: torch.device | None = None, probe_steps: int = 6, compiled: bool = False) -> BudgetPlan:
    """The planner every task uses: time ``step`` (:func:`time_steps`), then :func:`plan_budget`.
    ``eval_seconds``: the seconds of one per-epoch evaluation, or a function of the measured seconds per step.
    ``compiled``: the run compiles its model again, so the probe's first steps' extra time (the compilation)
    comes out of the budget."""
    if not budget_s > 0:
        raise ValueError(f"time budget must be a positive number of seconds, got {budget_s}")
    step_s, first_s = time_steps(step, probe_steps, device=device)
    if compiled:
        budget_s = max(budget_s - max(0.0, first_s - 2 * step_s), 0.1 * budget_s)
    eval_s = eval_seconds(step_s) if callable(eval_seconds) else eval_seconds
    return plan_budget(budget_s, steps_per_epoch, step_s, eval_s, max_epochs)


def apply_plan(config: ConfigT, plan: BudgetPlan) -> ConfigT:
    """A recipe (any config with ``epochs``, ``max_steps_per_epoch`` and ``warmup_epochs``) with the plan's length;
    a plan shorter than one epoch also cuts the warmup to a tenth of that epoch."""
    changes: dict[str, Any] = {"epochs": plan.epochs, "max_steps_per_epoch": plan.steps_per_epoch}
    if plan.short:
        changes["warmup_epochs"] = min(config.warmup_epochs, 0.1)  # type: ignore[attr-defined]
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]
