"""The recorded robustness study (issue 25, ``make robustness``): ``vitlab robustness`` on ViT/CNN pairs
trained by the same engine with equal budgets, plus the shipped DeiT and Swin, each record copied to
``reports/robustness/NAME.json`` (which ``make report`` and lesson 17 read).

* MNIST: ``vit_mnist`` vs ``simple_cnn``, the same 1,500 optimizer steps on all 54,000 training digits
  (lesson 08's data-efficiency runs, ``make efficiency``), training seeds 0 and 1; the shipped
  ``mnist-deit-hard`` and ``mnist-swin_mnist``. 1,000 seeded test images each.
* CIFAR-10: ``vit_cifar_small`` vs ``resnet20``, 30 minutes of CPU training each (``make crossover``'s
  1800 s runs, seed 0). 500 seeded test images each (a few minutes per model on a 2-core CPU).

Every model sees the same images and the same damage (``--seed 0``). A record that exists is kept; delete
it to measure again. Run folders are copied to a scratch folder first, so the study never writes into a
committed or shipped run::

    python -m tools.robustness_study            # all; python -m tools.robustness_study --only mnist
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "reports" / "robustness"

#: (run folder, record name, test images)
STUDY: list[tuple[str, str, int]] = [
    *[(f"runs/efficiency/efficiency-{model}-54000-s{seed}", f"mnist-{model}-s{seed}", 1000)
      for seed in (0, 1) for model in ("vit_mnist", "simple_cnn")],
    ("weights/mnist-deit-hard", "mnist-deit-hard-shipped", 1000),
    ("weights/mnist-swin_mnist", "mnist-swin_mnist-shipped", 1000),
    ("runs/cifar/vit-s-light-1800s-s0", "cifar10-vit_cifar_small-1800s-s0", 500),
    ("runs/cifar/resnet20-1800s-s0", "cifar10-resnet20-1800s-s0", 500),
]


def study_one(source: Path, name: str, images: int, scratch: Path) -> None:
    if not (source / "model.safetensors").is_file():
        raise SystemExit(f"{source} has no trained model: train it first (see this module's docstring)")
    folder = scratch / name
    folder.mkdir(parents=True)
    for file in ("config.json", "metrics.json", "history.csv", "model.safetensors"):
        if (source / file).is_file():
            shutil.copy2(source / file, folder / file)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitlab", "robustness", str(folder), "--seed", "0", "--images", str(images),
                    "--quiet"], check=True, cwd=ROOT)
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "robustness.json", OUT / f"{name}.json")
    print(f"[robustness] {name}: {time.perf_counter() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("mnist", "cifar10"), help="one dataset's part of the study")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        for source, name, images in STUDY:
            if (args.only and not name.startswith(args.only)) or (OUT / f"{name}.json").is_file():
                continue
            study_one(ROOT / source, name, images, Path(scratch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
