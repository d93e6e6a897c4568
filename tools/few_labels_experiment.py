"""Lesson 15's few-label experiment (``make selfdistill-labels``): does a DINO backbone help when labels are few?

``vit_mnist`` fine-tuned from the shipped DINO backbone (``weights/mnist-dino-vit_mnist``, pretrained on MNIST
without labels) against the same model from a random initialization, on 1 % and 10 % of MNIST's training
labels. Both starts use **one recipe** and **exactly the same number of optimizer steps** (so neither gets a
larger learning rate or more updates), seeds 0-2. Runs go to ``runs/dino-labels/`` (finished runs are
skipped); the report and the lesson read the recorded copies in ``reports/runs/``.

    python tools/few_labels_experiment.py [--sizes 540 5400] [--steps 1000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.efficiency_experiment import equal_steps
from vitlab.engine.classify import train_run
from vitlab.runfolder import Run

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "weights/mnist-dino-vit_mnist"
#: One recipe for both starts: between the fine-tuning default (3e-4) and vit_mnist's own (2e-3).
RECIPE = {"batch_size": 128, "lr": 1e-3, "min_lr": 1e-5, "weight_decay": 0.05, "warmup_epochs": 1.0,
          "label_smoothing": 0.0, "augment": "digits"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[540, 5400])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/dino-labels")
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for size in args.sizes:
            epochs, per_epoch = equal_steps(size, args.steps, RECIPE["batch_size"])
            recipe = {**RECIPE, "epochs": epochs, "max_steps_per_epoch": per_epoch,
                      "warmup_epochs": min(RECIPE["warmup_epochs"], epochs / 5)}
            for start in ("scratch", "dino"):
                out = ROOT / args.out / f"dino-labels-mnist-{size}-{start}-s{seed}"
                if Run(out).is_finished():
                    continue
                init = BACKBONE if start == "dino" else None
                flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items())
                command = (f"vitlab train {'--init ' + BACKBONE if init else '--model vit_mnist'} --dataset mnist "
                           f"--subset {size} --val-size 1000 --seed {seed} {flags} --experiment dino-labels "
                           f"--out {out.relative_to(ROOT)}")
                run = train_run(None if init else "vit_mnist", "mnist", out, recipe=recipe, init=init, subset=size,
                                val_size=1000, seed=seed, progress=False, verbose=False, resume=Run(out).has_state(),
                                command=command, experiment="dino-labels")
                print(f"{out.name}: {100 * run.metrics()['test_accuracy']:.2f} % ({epochs} x {per_epoch} steps)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
