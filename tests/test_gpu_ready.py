"""Ready for a GPU before one arrives: the CUDA paths that a CPU can check (issue: the suite and ``make
gpu-check`` must pass on a one-GPU machine). Each test runs on the CPU and fails if the fix it guards is undone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from tools import gpu_check

from vitlab.core.runtime import pick_device
from vitlab.data.augment import random_crop
from vitlab.engine.loop import DistContext, rng_state, set_rng_state
from vitlab.models.detection import DetectionOutput, SetCriterion


def test_yolos_class_loss_on_rows_equals_the_2d_form() -> None:
    """The class term is computed on (N*Q, K+1) rows: the same weighted mean as cross_entropy on (N, K+1, Q),
    which dispatches to nll_loss2d (nondeterministic on CUDA)."""
    torch.manual_seed(0)
    criterion = SetCriterion(num_classes=10)
    logits, boxes = torch.randn(3, 6, 11), torch.rand(3, 6, 4) * 0.5 + 0.25
    targets = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .3]])},
               {"labels": torch.tensor([7]), "boxes": torch.tensor([[.5, .5, .4, .4]])},
               {"labels": torch.tensor([], dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    _, parts = criterion(DetectionOutput(logits, boxes), targets)
    # The 2-d form, by hand: the same matched targets, cross_entropy over (N, K+1, Q).
    from vitlab.models.detection import hungarian_match

    target_classes = torch.full((3, 6), 10)
    for i, (rows, cols) in enumerate(hungarian_match(DetectionOutput(logits, boxes), targets, *criterion.weights)):
        target_classes[i, rows] = targets[i]["labels"][cols]
    two_d = F.cross_entropy(logits.transpose(1, 2), target_classes, criterion.class_weight)
    assert parts["loss_class"] == pytest.approx(two_d.item(), rel=1e-6)


def test_a_gpu_index_the_machine_lacks_is_a_one_line_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 GPU"):
        pick_device("cuda:7")
    assert pick_device("cuda:0") == torch.device("cuda:0")


def test_checkpoints_keep_the_cuda_random_state(monkeypatch) -> None:
    """Every task's checkpoint (DINO's included: one loop for all) holds the device's generator on CUDA."""
    saved = torch.tensor([7, 8, 9], dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: restored.append(state))
    state = rng_state(torch.device("cuda"))
    assert set(state) == {"cpu", "cuda"} and torch.equal(state["cuda"], saved)
    set_rng_state(state, torch.device("cuda"))
    assert torch.equal(restored[0], saved)
    assert set(rng_state(torch.device("cpu"))) == {"cpu"}


def test_each_rank_resumes_with_its_own_random_state() -> None:
    """A DDP checkpoint holds every rank's generator; rank r restores the r-th (not rank 0's on every rank)."""
    torch.manual_seed(1)
    rank1 = torch.get_rng_state()
    state = {"cpu": torch.zeros(5, dtype=torch.uint8), "ranks": [{"cpu": torch.get_rng_state()}, {"cpu": rank1}]}
    torch.manual_seed(123)
    set_rng_state(state, torch.device("cpu"), DistContext(rank=1, world_size=2))
    assert torch.equal(torch.get_rng_state(), rank1)


def test_random_crop_equals_padding_with_the_batch_minimum() -> None:
    """The crop pads with the batch minimum kept as a tensor (no host sync on a GPU): the same images as
    padding with its Python float, for the same random draws."""
    images = torch.randn(6, 3, 8, 8)
    torch.manual_seed(3)
    cropped = random_crop(images, padding=2)
    torch.manual_seed(3)
    padded = F.pad(images, (2,) * 4, value=float(images.amin()))
    dy, dx = torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    expected = torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(6)])
    assert torch.equal(cropped, expected)


def test_gpu_check_plan_fits_its_limits_and_ten_minutes() -> None:
    """Every step's expected GPU time (measured CPU cost x GPU_FACTOR + CUDA start-up per process) is under its
    limit, the limits and the two training budgets add up to ten minutes, and every planned file exists."""
    for step in ("unit-tests", "notebooks"):
        assert gpu_check.estimate(step) < gpu_check.LIMITS[step], step
    assert sum(gpu_check.LIMITS.values()) + 2 * gpu_check.TRAIN_BUDGET_S <= 600
    for path in [*gpu_check.UNIT_TESTS, *gpu_check.LESSONS]:
        assert (gpu_check.ROOT / path).is_file(), path
    assert set(gpu_check.TRAIN_MODELS.values()) <= set(__import__("vitlab").model_names())


def test_a_step_out_of_time_is_killed_with_its_children(tmp_path) -> None:
    """The step's whole process group goes: a child that the step started (a torchrun worker, a notebook kernel)
    must not outlive it and hold the GPU."""
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)")
    started = time.perf_counter()
    record = gpu_check.run_step("sleeper", [sys.executable, "-c", script], 3, tmp_path)
    assert record["status"] == "timed out after 3 s" and time.perf_counter() - started < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous: give the kernel a moment to reap it
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's child process {child} survived the timeout")


def test_gpu_check_without_the_datasets_stops_at_once(tmp_path) -> None:
    env = {**os.environ, "VITLAB_DATA": str(tmp_path / "nothing")}
    result = subprocess.run([sys.executable, "tools/gpu_check.py", "--allow-cpu", "--steps", "unit-tests",
                             "--out", str(tmp_path / "out")], cwd=gpu_check.ROOT, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2 and "VITLAB_DATA" in result.stdout
    assert not (tmp_path / "out").exists()
