"""The time budget's second look: after the first epoch, a budget run re-plans its length from that epoch's
measured time, and the re-planned run is exactly the run planned to that length from the start."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import _require
from vitlab.cli import main
from vitlab.engine import driver
from vitlab.engine.budget import plan_budget, replan_epochs
from vitlab.engine.driver import takes_second_look
from vitlab.engine.loop import DistContext
from vitlab.engine.train import TrainConfig, change_length, schedule_factor


def test_replan_fits_whole_epochs_of_the_first_epochs_length() -> None:
    assert replan_epochs(600, 33.0) == 18          # 600 / 33 = 18.2
    assert replan_epochs(600, 61.0) == 9           # a slower machine than the probe said: fewer
    assert replan_epochs(600, 33.0, max_epochs=12) == 12
    assert replan_epochs(10, 50.0) == 1            # the epoch already run is the least
    for budget, first in ((0, 1.0), (600, 0.0), (600, float("nan"))):
        with pytest.raises(ValueError, match="cannot re-plan"):
            replan_epochs(budget, first)


def test_a_plan_records_its_cap_and_its_replan() -> None:
    plan = plan_budget(600, steps_per_epoch=100, step_s=0.1, eval_s=2.0, max_epochs=40)
    assert (plan.epochs, plan.max_epochs, plan.whole_epochs) == (40, 40, True)  # 50 fit, the cap is 40
    again = plan.replanned(18, 33.0)
    assert (again.epochs, again.first_epoch_s, again.probe_epochs, again.step_s) == (18, 33.0, 40, 0.1)
    assert not plan_budget(600, steps_per_epoch=100, step_s=5.0, eval_s=2.0).whole_epochs  # 1.2 epochs: shortened


def _lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def _scheduler(config: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=config.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(config, steps_per_epoch))


@pytest.mark.parametrize("warmup_epochs", [1.0, 2.0])
def test_changing_the_length_during_the_warmup_gives_the_schedule_of_that_length(warmup_epochs: float) -> None:
    steps = 5
    planned = TrainConfig(epochs=3, lr=1e-2, warmup_epochs=warmup_epochs)
    scheduler = _scheduler(planned, steps)
    first = _lrs(scheduler, steps)
    config, changed = change_length(planned, scheduler, steps, 8)
    assert changed and config.epochs == 8
    rest = _lrs(scheduler, 7 * steps)
    from_the_start = _lrs(_scheduler(TrainConfig(epochs=8, lr=1e-2, warmup_epochs=warmup_epochs), steps), 8 * steps)
    assert first + rest == pytest.approx(from_the_start, rel=0, abs=1e-15)
    assert first + rest != pytest.approx(_lrs(_scheduler(planned, steps), 8 * steps))  # the length matters later


def test_the_last_warmup_step_is_the_last_moment_to_change_the_length() -> None:
    steps = 5
    planned = TrainConfig(epochs=3, lr=1e-2, warmup_epochs=1.0)   # warm-up: the first 5 steps
    at_the_end = _scheduler(planned, steps)
    _lrs(at_the_end, steps)
    assert change_length(planned, at_the_end, steps, 8)[1]
    one_past = _scheduler(planned, steps)
    _lrs(one_past, steps + 1)   # one cosine step taken: its rate depended on the length
    assert not change_length(planned, one_past, steps, 8)[1]


def test_a_run_whose_cosine_has_begun_keeps_its_length() -> None:
    steps = 5
    planned = TrainConfig(epochs=3, lr=1e-2, warmup_epochs=0.5)  # the first epoch is half cosine already
    scheduler = _scheduler(planned, steps)
    _lrs(scheduler, steps)
    factor = scheduler.lr_lambdas[0]
    config, changed = change_length(planned, scheduler, steps, 8)
    assert not changed and config is planned and scheduler.lr_lambdas[0] is factor
    assert change_length(planned, _scheduler(planned, steps), steps, 3)[1] is False  # same length: nothing to do
    with pytest.raises(ValueError, match="at least one epoch"):
        change_length(planned, _scheduler(planned, steps), steps, 0)


SMALL = ["train", "--model", "vit_seed", "--dataset", "mnist", "--subset", "256", "--val-size", "64",
         "--test-subset", "100", "--batch-size", "32", "--quiet"]


def test_a_replanned_run_equals_the_run_planned_to_that_length(tmp_path, monkeypatch, capsys) -> None:
    """The probe plans the --epochs cap (9); the first epoch's (stubbed) measurement leaves room for 3. The run
    then trains 3 epochs and ends with the very weights of a run told --epochs 3 from the start."""
    _require("mnist")
    asked = []

    def three(budget_s: float, first_epoch_s: float, max_epochs: int | None = None) -> int:
        asked.append((budget_s, first_epoch_s, max_epochs))
        return 3

    monkeypatch.setattr(driver, "replan_epochs", three)
    replanned, fixed = tmp_path / "replanned", tmp_path / "fixed"
    assert main([*SMALL, "--warmup-epochs", "1", "--epochs", "9", "--time-budget", "1000",
                 "--out", str(replanned)]) == 0
    out = capsys.readouterr().out
    assert "time budget 1000 s: 9 epoch(s)" in out and "re-planned from 9 to 3 epoch(s)" in out
    assert "epoch 2/3" in out and "epoch 4/" not in out
    (budget_s, first_s, cap), = asked
    assert budget_s == 1000 and cap == 9 and first_s > 0
    config = json.loads((replanned / "config.json").read_text())
    assert config["train"]["epochs"] == 3
    assert config["budget_plan"]["epochs"] == 3 and config["budget_plan"]["probe_epochs"] == 9
    assert config["budget_plan"]["first_epoch_s"] == pytest.approx(first_s)
    metrics = json.loads((replanned / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["recipe"]["epochs"] == 3, "metrics.json records the recipe it trained"

    assert main([*SMALL, "--warmup-epochs", "1", "--epochs", "3", "--out", str(fixed)]) == 0
    ours, theirs = load_file(replanned / "model.safetensors"), load_file(fixed / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Resuming the finished, re-planned run keeps its recorded plan (and only re-tests it).
    assert main([*SMALL, "--warmup-epochs", "1", "--epochs", "9", "--time-budget", "1000",
                 "--out", str(replanned), "--resume"]) == 0
    assert json.loads((replanned / "config.json").read_text())["train"]["epochs"] == 3


def test_a_run_past_its_warmup_keeps_the_probes_plan(tmp_path, monkeypatch, capsys) -> None:
    _require("mnist")
    monkeypatch.setattr(driver, "replan_epochs", lambda budget_s, first_epoch_s, max_epochs=None: 2)
    out = tmp_path / "kept"
    assert main([*SMALL, "--warmup-epochs", "0.5", "--epochs", "4", "--time-budget", "1000", "--out", str(out)]) == 0
    assert "2 epoch(s) would fit, but the run keeps 4" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    plan = config["budget_plan"]
    assert config["train"]["epochs"] == 4 and plan["epochs"] == plan["probe_epochs"] == 4 and plan["first_epoch_s"] > 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 4


def test_the_plan_stands_when_the_first_epoch_agrees(tmp_path, monkeypatch, capsys) -> None:
    _require("mnist")
    monkeypatch.setattr(driver, "replan_epochs", lambda budget_s, first_epoch_s, max_epochs=None: max_epochs)
    out = tmp_path / "stands"
    assert main([*SMALL, "--warmup-epochs", "1", "--epochs", "2", "--time-budget", "1000", "--out", str(out)]) == 0
    assert "the plan of 2 epoch(s) stands" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["budget_plan"]["first_epoch_s"] > 0, "the measurement is kept"
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 2


def test_only_whole_epoch_single_process_eager_plans_take_a_second_look() -> None:
    whole = plan_budget(600, steps_per_epoch=100, step_s=0.1, eval_s=2.0)
    shortened = plan_budget(600, steps_per_epoch=100, step_s=3.0, eval_s=2.0)   # 2 epochs of fewer steps
    one = DistContext()
    assert takes_second_look(whole, TrainConfig(), one)
    assert not takes_second_look(shortened, TrainConfig(), one)
    assert not takes_second_look(whole, TrainConfig(compile=True), one), "the first epoch pays the compilation"
    assert not takes_second_look(whole, TrainConfig(), DistContext(rank=0, world_size=2))
