"""The report's transfer-learning experiment (issue: transfer learning; lesson 12).

No model hub is reachable on the course's machines, so transfer is shown on data that is:

1. **pretrain** ``vit_cifar_small`` with labels on five CIFAR-10 classes (airplane, automobile,
   bird, cat, deer: 22,500 training images after the 10 % validation split);
2. **transfer** to the other five (dog, frog, horse, ship, truck) with 1 %, 10 % and 100 % of their
   training labels (250, 2,500 and 22,500 images), four ways, each with the same wall-clock budget:
   from scratch, linear probe (``--freeze backbone``), full fine-tuning, and fine-tuning with
   layer-wise learning-rate decay (``--layer-decay 0.75``); several seeds where noise matters.

Every run is an ordinary ``vitlab train`` run folder (the command of each is in its config.json)::

    python tools/transfer_experiment.py --out runs/transfer --device cuda --workers 4

``--workers N`` runs N runs at a time on one device (each plans its epochs from a step time measured
under that shared load, so every run gets the same wall-clock budget). Finished runs are skipped,
so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

SOURCE_CLASSES = ["airplane", "automobile", "bird", "cat", "deer"]
TARGET_CLASSES = ["dog", "frog", "horse", "ship", "truck"]
LABEL_FRACTIONS = {1: 250, 10: 2500, 100: None}  # percent of the 25,000 target training images -> subset
METHODS: dict[str, dict[str, Any]] = {
    "scratch": {},
    "probe": {"freeze": "backbone"},
    "finetune": {},
    "finetune-lld": {"layer_decay": 0.75},
}


def run_one(job: dict[str, Any]) -> tuple[str, float, int]:
    """One run in its own process (the parent's jobs run in parallel)."""
    import torch

    from vitlab.engine.classify import train_run
    from vitlab.runfolder import Run

    torch.set_num_threads(job["threads"])
    run = Run(job["out"])
    if not run.is_finished():
        train_run(job["model"], "cifar10", job["out"], classes=job["classes"], init=job["init"],
                  recipe=job["recipe"], subset=job["subset"], seed=job["seed"], time_budget=job["budget"],
                  device=job["device"], progress=False, verbose=False, resume=run.has_state(),
                  command=job["command"])
    metrics = run.metrics()
    return run.name, metrics["test_accuracy"], metrics["epochs"]


def command(model: str | None, out: Path, *, classes: list[str], budget: float, seed: int, subset: int | None,
            init: Path | None, recipe: dict[str, Any], device: str) -> str:
    """The equivalent ``vitlab train`` command line, recorded in each run's config.json."""
    parts = ["vitlab train", f"--model {model}" if model else f"--init {init}", "--dataset cifar10",
             f"--classes {','.join(classes)}", f"--time-budget {budget:g}", f"--seed {seed}", f"--device {device}"]
    parts += [f"--subset {subset}"] if subset else []
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in recipe.items()]
    return " ".join(parts + [f"--out {out}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/transfer", help="folder for the run folders")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pretrain-budget", type=float, default=180, help="seconds for the pretraining run")
    parser.add_argument("--pretrain-epochs", type=int, default=100, help="most epochs the pretraining may run")
    parser.add_argument("--budget", type=float, default=20, help="seconds for each transfer run")
    parser.add_argument("--max-epochs", type=int, default=1000, help="most epochs a transfer run may run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for 1 %% and 10 %% labels")
    parser.add_argument("--seeds-full", type=int, default=1, help="how many of the seeds 100 %% labels use")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time")
    parser.add_argument("--fractions", type=int, nargs="+", default=list(LABEL_FRACTIONS))
    args = parser.parse_args(argv)

    out = Path(args.out)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    pretrain = out / "cifar5-pretrain"
    started = time.perf_counter()
    recipe = {"epochs": args.pretrain_epochs}
    name, accuracy, epochs = run_one({
        "model": "vit_cifar_small", "out": str(pretrain), "classes": SOURCE_CLASSES, "init": None,
        "recipe": recipe, "subset": None, "seed": 0, "budget": args.pretrain_budget, "device": args.device,
        "threads": os.cpu_count() or 1,
        "command": command("vit_cifar_small", pretrain, classes=SOURCE_CLASSES, budget=args.pretrain_budget, seed=0,
                           subset=None, init=None, recipe=recipe, device=args.device)})
    print(f"{name}: {100 * accuracy:.2f}% after {epochs} epochs ({time.perf_counter() - started:.0f} s)", flush=True)

    jobs = []
    for percent in args.fractions:
        subset = LABEL_FRACTIONS[percent]
        for seed in args.seeds if percent < 100 else args.seeds[: args.seeds_full]:
            for method, extra in METHODS.items():
                model, init = ("vit_cifar_small", None) if method == "scratch" else (None, pretrain)
                recipe = {"epochs": args.max_epochs, **extra}
                run_out = out / f"cifar5to5-{percent}pct-{method}-s{seed}"
                jobs.append({"model": model, "out": str(run_out), "classes": TARGET_CLASSES,
                             "init": str(init) if init else None, "recipe": recipe, "subset": subset, "seed": seed,
                             "budget": args.budget, "device": args.device, "threads": threads,
                             "command": command(model, run_out, classes=TARGET_CLASSES, budget=args.budget,
                                                seed=seed, subset=subset, init=init, recipe=recipe,
                                                device=args.device)})
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for name, accuracy, epochs in pool.map(run_one, jobs):
            print(f"{name}: {100 * accuracy:.2f}% after {epochs} epochs ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
