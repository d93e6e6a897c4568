"""One-command GPU check (``make gpu-check``): does vitlab work, and how fast, on this GPU? About 10 minutes.

Steps, each under its own time limit so the whole check stays bounded (``--scale`` stretches them all):

1. ``environment``: the GPU, torch, and what ``--precision auto`` picks on it;
2. ``unit-tests``: the unit tests, on CUDA (every test that picks a device gets the GPU);
3. ``notebooks``: every lesson in quick mode (``VITLAB_QUICK=1``) through nbval, on CUDA;
4. ``train-vit``: ``vit_cifar`` on the full CIFAR-10 at ``--precision auto`` (bf16 on a GPU with bf16 tensor
   cores) for a fixed wall-clock budget (45 s), then its test accuracy;
5. ``train-resnet``: the same for ResNet-18;
6. ``bench``: ``bench/bench.py`` on the GPU (``vit_cifar_small``, ``vit_cifar``, ``swin_cifar``, ResNet-18;
   fp32 and bf16, vitlab vs timm; torch.compile of ``vit_cifar``), with short timing windows.

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
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("environment", "unit-tests", "notebooks", "train-vit", "train-resnet", "bench")
#: Seconds each step may take (before ``--scale``). The training steps get ``--train-budget`` (45 s) on
#: top of theirs (loading CIFAR-10, planning the budget, the test set), so the limits add up to 600 s:
#: the whole check ends within about ten minutes, whatever hangs. A step that runs out is reported so.
LIMITS = {"unit-tests": 120, "notebooks": 150, "train-vit": 60, "train-resnet": 60, "bench": 120}
#: The bench's presets here (``make bench`` times all of them), and the one whose compilation is timed.
BENCH_MODELS = "vit_cifar_small,vit_cifar,swin_cifar,resnet18"
COMPILE_MODELS = "vit_cifar"


def run_step(name: str, command: list[str], limit: float, out: Path, env: dict[str, str] | None = None
             ) -> dict[str, object]:
    """Run ``command`` with a time limit; its output goes to ``out/<name>.log``. Returns the step's record."""
    log = out / f"{name}.log"
    started = time.perf_counter()
    print(f"[gpu-check] {name}: {' '.join(command)} (limit {limit:.0f} s)", flush=True)
    with log.open("w") as handle:
        try:
            code = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, **(env or {})}).returncode
            status = "passed" if code == 0 else f"failed (exit {code})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    seconds = time.perf_counter() - started
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    print(f"[gpu-check] {name}: {status} in {seconds:.0f} s", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1), "log": log.name, "tail": tail}


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
    parser.add_argument("--train-budget", type=float, default=45.0, help="training seconds per model")
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
        record = run_step("unit-tests", [python, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider",
                                         "--ignore=tests/test_site.py"],
                          LIMITS["unit-tests"] * args.scale, out, cuda_env)
        record["result"] = pytest_counts(out / "unit-tests.log")
        records.append(record)
    if "notebooks" in steps:
        record = run_step("notebooks", [python, "-m", "pytest", "notebooks", "--nbval-lax", "--nbval-current-env",
                                        "-q", "-p", "no:cacheprovider"], LIMITS["notebooks"] * args.scale, out,
                          cuda_env)
        record["result"] = pytest_counts(out / "notebooks.log")
        records.append(record)
    for step, model in (("train-vit", "vit_cifar"), ("train-resnet", "resnet18")):
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
                   "--repeats", "3",
                   "--batch", "256", "--compile-models", COMPILE_MODELS, "--device", str(device),
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
