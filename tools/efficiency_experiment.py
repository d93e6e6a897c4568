"""Lesson 08's data-efficiency experiment (``make efficiency``): test accuracy against training-set size for
``vit_mnist`` and ``simple_cnn``, every run the same number of optimizer steps (small subsets are seen many
times), the same recipe and augmentation, seeds 0-2. Runs go to ``runs/efficiency/`` (finished runs are
skipped); the lesson reads the recorded copies in ``reports/runs/efficiency-*``.

    python tools/efficiency_experiment.py [--sizes 500 2000 8000 54000] [--steps 1500] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from vitlab.engine.classify import train_run
from vitlab.runfolder import Run

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("vit_mnist", "simple_cnn")
BATCH = 128


def equal_steps(train_images: int, steps: int, batch: int = BATCH) -> tuple[int, int]:
    """``(epochs, steps per epoch)`` that make exactly ``steps`` optimizer steps on ``train_images`` images in
    full batches (``drop_last``): the fewest epochs whose equal share of the steps fits in one epoch."""
    per_epoch = train_images // batch
    if per_epoch == 0:
        raise ValueError(f"{train_images} images are fewer than one batch of {batch}")
    epochs = next(e for e in range(math.ceil(steps / per_epoch), steps + 1) if steps % e == 0)
    return epochs, steps // epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000, 54000])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/efficiency")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for size in args.sizes:
            epochs, per_epoch = equal_steps(size, args.steps)
            for model in MODELS:
                out = ROOT / args.out / f"efficiency-{model}-{size}-s{seed}"
                if Run(out).is_finished():
                    continue
                recipe = {"epochs": epochs, "max_steps_per_epoch": per_epoch, "batch_size": BATCH, "lr": 2e-3,
                          "weight_decay": 0.05, "warmup_epochs": min(1.0, epochs / 5), "augment": "digits"}
                command = (f"vitlab train --model {model} --dataset mnist --subset {size} --seed {seed} "
                           + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items())
                           + f" --experiment efficiency --out {out.relative_to(ROOT)}")
                run = train_run(model, "mnist", out, recipe=recipe, subset=size, seed=seed, progress=False,
                                verbose=False, resume=Run(out).has_state(), command=command, experiment="efficiency")
                print(f"{out.name}: {100 * run.metrics()['test_accuracy']:.2f} % ({epochs} x {per_epoch} steps)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
