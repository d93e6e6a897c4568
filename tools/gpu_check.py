"""One-command GPU check (``make gpu-check``): does vitlab work, and how fast, on this GPU? Within 10 minutes.

Each step runs in its own process group under its own time limit; a step that runs out is killed with all
its children (so no orphan holds the GPU during the next step) and reported as timed out. The steps, what
they cost on a CPU (measured, ``pytest --durations=0``) and the limit each gets on one GPU (:data:`PLAN`):

1. ``environment``: the GPU, torch, and what ``--precision auto`` picks on it;
2. ``unit-tests``: the test files that take the device paths (training, DDP on the CPU, precision, dense
   tasks, DINO, early exits, DeiT, Swin), on CUDA: about 2 minutes;
3. ``notebooks``: the lessons that train (06, 13, 15, 16) in quick mode through nbval, on CUDA: about 1.5 min;
4. ``train-vit``: ``vit_cifar_small`` on the full CIFAR-10 at ``--precision auto`` (bf16 on a GPU with bf16
   tensor cores) for ``--train-budget`` seconds (30), then its test accuracy;
5. ``train-resnet``: the same for ResNet-20 (He et al.'s CIFAR ResNet);
6. ``bench``: ``bench/bench.py`` on the GPU (``vit_cifar_small``, ``vit_cifar``, ResNet-18; fp32 and bf16,
   vitlab vs timm), with short timing windows.

Every unit test and lesson not listed runs in ``make test`` on the CPU; the check runs what differs on a GPU
within the time a lent GPU gives. It needs the datasets (``VITLAB_DATA``: MNIST and CIFAR-10); without them
it stops at once rather than let downloads hang inside the time limits.

It writes one folder (default ``reports/gpu-check``): ``summary.md`` (what ran, pass/fail, times, the
accuracies and the bench tables, with the card's name), ``summary.json``, and one log per step.
Without a CUDA GPU it stops at step 1 and says so; ``--allow-cpu`` rehearses the steps on a CPU (for
developing this script; its numbers are no GPU numbers).

    make gpu-check                              (set-up with timm, then this script)
    python tools/gpu_check.py --steps environment,train-vit --train-budget 30
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("environment", "unit-tests", "notebooks", "train-vit", "train-resnet", "bench")

#: What the test steps run, with the seconds each file took on a 2-core CPU (Intel Xeon with AMX,
#: ``pytest --durations=0``, 2026-12-03; on a GPU the compute is faster but every process pays CUDA's
#: start-up, so the estimate is the CPU time times GPU_FACTOR plus CUDA_START_S per process).
UNIT_TESTS: dict[str, float] = {
    "tests/test_train.py": 52.4, "tests/test_precision.py": 3.2, "tests/test_dense.py": 15.1,
    "tests/test_dino.py": 3.3, "tests/test_early_exit.py": 13.8, "tests/test_deit.py": 4.3,
    "tests/test_swin.py": 2.6, "tests/test_model.py": 0.2, "tests/test_attention.py": 0.1,
    "tests/test_augment.py": 2.5,  # the batched TrivialAugment on CUDA against the CPU path
}
LESSONS: dict[str, float] = {
    "notebooks/06_training.ipynb": 11.0, "notebooks/13_deit_distillation.ipynb": 12.0,
    "notebooks/15_self_distillation.ipynb": 14.0, "notebooks/16_segmentation_and_detection.ipynb": 16.0,
}
#: Subprocesses a step starts that each pay CUDA's start-up: the CLI and torchrun tests, one kernel per lesson.
PROCESSES = {"unit-tests": 12, "notebooks": len(LESSONS)}
GPU_FACTOR, CUDA_START_S = 1.5, 6.0
#: Each step's limit in seconds (the training steps get ``--train-budget`` on top, for CIFAR-10's loading, the
#: budget's probe and the test set); with the default 30 s budget the limits add up to 600 s.
LIMITS = {"environment": 10, "unit-tests": 230, "notebooks": 110, "train-vit": 40, "train-resnet": 40, "bench": 90}
TRAIN_BUDGET_S = 30.0
#: The bench's presets here (``make bench`` times all of them).
BENCH_MODELS = "vit_cifar_small,vit_cifar,resnet18"
TRAIN_MODELS = {"train-vit": "vit_cifar_small", "train-resnet": "resnet20"}


def estimate(step: str) -> float:
    """The seconds ``step`` is expected to take on one GPU, from the CPU costs above."""
    cost = {"unit-tests": sum(UNIT_TESTS.values()), "notebooks": sum(LESSONS.values())}.get(step, 0.0)
    return cost * GPU_FACTOR + PROCESSES.get(step, 0) * CUDA_START_S


def run_step(name: str, command: list[str], limit: float, out: Path, env: dict[str, str] | None = None
             ) -> dict[str, object]:
    """Run ``command`` in its own process group with a time limit; its output goes to ``out/<name>.log``. On
    timeout the whole group is killed (torchrun workers, notebook kernels). Returns the step's record."""
    log = out / f"{name}.log"
    started = time.perf_counter()
    print(f"[gpu-check] {name}: {' '.join(command)} (limit {limit:.0f} s)", flush=True)
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            code = process.wait(timeout=limit)
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            kill_group(process)
            status = f"timed out after {limit:.0f} s"
    seconds = time.perf_counter() - started
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"[gpu-check] {name}: {status} in {seconds:.0f} s", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1), "log": log.name, "tail": tail}


def kill_group(process: subprocess.Popen) -> None:
    """Kill a process started with ``start_new_session=True`` and every process of its group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def missing_data() -> list[str]:
    """The datasets the steps need that this machine lacks (under ``VITLAB_DATA`` or ./data)."""
    from vitlab.data import DATASETS, data_root

    root = data_root()
    missing = []
    for name in ("mnist", "cifar10"):
        info = DATASETS[name]
        if not ((info.torchvision_folder and (root / info.torchvision_folder).exists())
                or any((root / folder / "train").is_dir() for folder, _ in info.image_folders)):
            missing.append(f"{name} (looked in {root})")
    return missing


def pytest_counts(log: Path) -> str:
    """pytest's closing line (``12 passed, 1 skipped in 3.4s``), or the dots counted if it never got there."""
    text = log.read_text(errors="replace")
    found = re.findall(r"^(?:=+ )?(\d+ (?:passed|failed|errors?|skipped|deselected).*?) in [\d.]+s", text, flags=re.M)
    if found:
        return found[-1]
    progress = "".join(re.findall(r"^[.FEsx]+(?= *\[|$)", text, flags=re.M))
    return f"{progress.count('.')} passed, {progress.count('F')} failed before the limit"


def train_result(run: Path) -> dict[str, object]:
    """The numbers of a finished run folder."""
    metrics = json.loads((run / "metrics.json").read_text())
    history = [line.split(",") for line in (run / "history.csv").read_text().splitlines()]
    header, rows = history[0], history[1:]
    rate = [float(r[header.index("train_images_per_s")]) for r in rows] if "train_images_per_s" in header else []
    dataset = json.loads((run / "config.json").read_text()).get("dataset", {})
    return {"test_accuracy": metrics["test_accuracy"], "epochs": metrics["epochs"],
            "dataset": f"{dataset.get('name', '?')} ({dataset.get('train_n', 0):,} train images)",
            "train_time_s": metrics["train_time_s"], "precision": metrics.get("precision"),
            "device": metrics.get("device"), "train_images_per_s": max(rate) if rate else None,
            "steps_per_epoch_cap": metrics.get("recipe", {}).get("max_steps_per_epoch")}


def environment(device: torch.device) -> dict[str, object]:
    from vitlab.core.precision import describe_precision

    info: dict[str, object] = {"torch": torch.__version__, "python": sys.version.split()[0],
                               "date": datetime.datetime.now().isoformat(timespec="minutes"),
                               "device": str(device), "precision_auto": describe_precision("auto", device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def summary_markdown(info: dict[str, object], records: list[dict[str, object]], trained: dict[str, dict],
                     bench_table: str | None, wall: float, budget: float) -> str:
    where = info.get("gpu") or f"{info['device']} (NOT a GPU: a rehearsal with --allow-cpu)"
    lines = [f"# vitlab GPU check: {where}", "",
             f"{info['date']}, torch {info['torch']}, Python {info['python']}"
             + (f", compute capability {info['capability']}, {info['gpu_memory_gib']} GiB" if "gpu" in info else "")
             + f"; `--precision auto` picks {info['precision_auto']}. Whole check: {wall / 60:.1f} minutes "
             f"(training budget {budget:.0f} s per model).", "",
             "| step | status | seconds | result |", "|---|---|---:|---|"]
    for record in records:
        result = record.get("result", "")
        lines.append(f"| {record['step']} | {record['status']} | {record['seconds']:.0f} | {result} |")
    if trained:
        lines += ["", "| model | dataset | precision | epochs | train time | best train img/s | test accuracy |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for model, r in trained.items():
            epochs = f"{r['epochs']}" + (f" x {r['steps_per_epoch_cap']} steps" if r.get("steps_per_epoch_cap") else "")
            rate = f"{r['train_images_per_s']:,.0f}" if r.get("train_images_per_s") else "–"
            lines.append(f"| {model} | {r['dataset']} | {r['precision']} | {epochs} | {r['train_time_s']:.0f} s | "
                         f"{rate} | {100 * r['test_accuracy']:.2f} % |")
    if bench_table:
        lines += ["", "## Bench", "", bench_table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/gpu-check", help="folder for summary.md, summary.json and logs")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--train-budget", type=float, default=TRAIN_BUDGET_S, help="training seconds per model")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step's time limit")
    parser.add_argument("--allow-cpu", action="store_true", help="rehearse on a CPU (no GPU numbers)")
    args = parser.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown or args.train_budget <= 0 or args.scale <= 0:
        parser.error(f"unknown step(s) {unknown}; steps are {', '.join(STEPS)}" if unknown
                     else "--train-budget and --scale must be positive")

    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.allow_cpu:
        device = torch.device("cpu")
    else:
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False), so there is nothing "
              "to check; run it on a machine with an NVIDIA GPU (or --allow-cpu to rehearse the steps on a CPU)")
        return 2
    needs_data = [s for s in steps if s in ("unit-tests", "notebooks", "train-vit", "train-resnet")]
    if needs_data and missing_data():
        print(f"gpu-check: {', '.join(needs_data)} need the datasets, and {'; '.join(missing_data())} is missing: "
              "set VITLAB_DATA to the folder that holds MNIST and CIFAR-10 (the check never downloads: a download "
              "would eat the time limits)")
        return 2
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    python = sys.executable
    cuda_env = {"VITLAB_QUICK": "1", "PYTHONUNBUFFERED": "1"}
    info = environment(device)
    print(f"[gpu-check] {json.dumps(info)}", flush=True)
    records: list[dict[str, object]] = []
    trained: dict[str, dict] = {}
    bench_table = None
    if "environment" in steps:
        records.append({"step": "environment", "status": "passed", "seconds": 0.0,
                        "result": f"{info.get('gpu', info['device'])}; auto = {info['precision_auto']}"})
    if "unit-tests" in steps:
        record = run_step("unit-tests", [python, "-m", "pytest", *UNIT_TESTS, "-q", "-p", "no:cacheprovider"],
                          LIMITS["unit-tests"] * args.scale, out, cuda_env)
        record["result"] = pytest_counts(out / "unit-tests.log")
        records.append(record)
    if "notebooks" in steps:
        record = run_step("notebooks", [python, "-m", "pytest", *LESSONS, "--nbval-lax", "--nbval-current-env",
                                        "-q", "-p", "no:cacheprovider"], LIMITS["notebooks"] * args.scale, out,
                          cuda_env)
        record["result"] = pytest_counts(out / "notebooks.log")
        records.append(record)
    for step, model in TRAIN_MODELS.items():
        if step not in steps:
            continue
        run = out / "runs" / model
        command = [python, "-m", "vitlab", "train", "--model", model, "--dataset", "cifar10", "--epochs", "100",
                   "--time-budget", f"{args.train_budget:g}", "--precision", "auto", "--out", str(run), "--quiet",
                   "--device", str(device)]
        if run.exists():
            shutil.rmtree(run)  # a fresh run every check (the budget is the point)
        record = run_step(step, command, args.train_budget + LIMITS[step] * args.scale, out,
                          {"PYTHONUNBUFFERED": "1"})
        if (run / "metrics.json").exists():
            trained[model] = train_result(run)
            record["result"] = f"test accuracy {100 * trained[model]['test_accuracy']:.2f} %"
        records.append(record)
    if "bench" in steps:
        command = [python, "bench/bench.py", "--models", BENCH_MODELS, "--budget", "2", "--window", "0.3",
                   "--repeats", "3", "--no-compile",
                   "--batch", "256", "--device", str(device),
                   "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]
        record = run_step("bench", command, LIMITS["bench"] * args.scale, out, {"PYTHONUNBUFFERED": "1"})
        if (out / "bench.md").exists():
            bench_table = (out / "bench.md").read_text()
            record["result"] = "tables below"
        records.append(record)
    wall = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps({"environment": info, "steps": records, "trained": trained,
                                                  "wall_s": round(wall, 1)}, indent=1) + "\n")
    text = summary_markdown(info, records, trained, bench_table, wall, args.train_budget)
    (out / "summary.md").write_text(text)
    print(text)
    print(f"[gpu-check] wrote {out / 'summary.md'}")
    return 0 if all(r["status"] == "passed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
