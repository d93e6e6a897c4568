"""Lesson 10's CIFAR-10 experiments on a CPU: the transformer recipe search and the crossover study.

**Search** (``make cifar-search``): which transformer, ViT or CCT, and which recipe give the best accuracy
after 30 minutes of training on the full CIFAR-10? Successive halving, as lesson 07 teaches, judged on the
validation split (the test set is never used to choose):

1. every candidate of :data:`CANDIDATES` for 5 minutes (seed 0);
2. the best two of each family for 15 minutes;
3. the best of each family for 30 minutes, seeds 0 and 1.

**Crossover** (``make crossover``): the registered presets (the search's winners, He et al.'s ResNet-20 and
the ImageNet-shaped ResNet-18) trained with ``--time-budget`` of 2, 5, 10, 30 and 60 minutes: seeds 0 and 1
at 2, 5, 10 and 30 minutes, seed 0 at 60. Every run is an ordinary ``vitlab train`` run folder in
``runs/cifar/`` (its command is in its config.json), finished runs are skipped, and an interrupted run resumes.

    python tools/cifar_experiment.py search [--round 1|2|3] [--only CANDIDATE ...]
    python tools/cifar_experiment.py crossover [--budgets 120 300 ...] [--models ...] [--seeds 0 1 ...]
    python tools/cifar_experiment.py status
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "cifar"

#: Search candidates: name -> (model, family, flags over the model's registered recipe). What they vary: the
#: family (patches vs a convolutional tokenizer), size, augmentation strength for few epochs, batch size and
#: learning rate, label smoothing. Precision is auto throughout (bf16 on a CPU with AMX: measured 1.4-1.8x the
#: fp32 training throughput of these presets on one, ``make bench``).
CANDIDATES: dict[str, tuple[str, str, list[str]]] = {
    "vit-s": ("vit_cifar_small", "vit", []),
    "vit-s-light": ("vit_cifar_small", "vit", ["--augment", "cifar"]),
    "vit-s-light-lr2": ("vit_cifar_small", "vit", ["--augment", "cifar", "--lr", "2e-3"]),
    "vit-d4-light": ("vit_cifar_small", "vit", ["--augment", "cifar", "--model-arg", "depth=4"]),
    "vit-w96-light": ("vit_cifar_small", "vit", ["--augment", "cifar", "--model-arg", "dim=96"]),
    "vit-p8-light": ("vit_cifar_small", "vit", ["--augment", "cifar", "--model-arg", "patch_size=8"]),
    "cct2": ("cct_2_3x2", "cct", []),
    "cct2-strong": ("cct_2_3x2", "cct", ["--augment", "cifar-strong"]),
    "cct2-lr2": ("cct_2_3x2", "cct", ["--lr", "2e-3"]),
    "cct2-b256": ("cct_2_3x2", "cct", ["--batch-size", "256", "--lr", "2e-3"]),
    "cct2-ls0": ("cct_2_3x2", "cct", ["--label-smoothing", "0"]),
    "cct4": ("cct_4_3x2", "cct", []),
}
ROUNDS = {1: 300, 2: 900, 3: 1800}
#: The crossover's runs: label -> (model, flags). The ViT runs with the search's winner (light augmentation beat
#: the registered cifar-strong by 5.8 points at 5 minutes, then lr 1e-3 beat 2e-3 at 15); the others as registered.
CROSSOVER_RUNS: dict[str, tuple[str, list[str]]] = {
    "vit-s-light": ("vit_cifar_small", ["--augment", "cifar"]), "cct2": ("cct_2_3x2", []),
    "resnet20": ("resnet20", []), "resnet18": ("resnet18", [])}
CROSSOVER_BUDGETS = (120, 300, 600, 1800, 3600)
#: Seeds per budget: two up to 30 minutes, one at 60 (and one for ResNet-18 at 30: a fifth of an hour's CPU).
SEEDS = {120: (0, 1), 300: (0, 1), 600: (0, 1), 1800: (0, 1), 3600: (0,)}


def folder(label: str, budget: int, seed: int) -> Path:
    return RUNS / f"{label}-{budget}s-s{seed}"


def train(label: str, model: str, flags: list[str], budget: int, seed: int, experiment: str) -> Path:
    """One ``vitlab train`` run (skipped when finished, resumed when interrupted), in a fresh process."""
    out = folder(label, budget, seed)
    if (out / "metrics.json").is_file():
        return out
    command = [sys.executable, "-m", "vitlab", "train", "--model", model, "--dataset", "cifar10", "--epochs", "300",
               "--time-budget", str(budget), "--seed", str(seed), *flags, "--experiment", experiment,
               "--out", str(out.relative_to(ROOT)), "--quiet"]
    if (out / "checkpoint.pt").is_file():
        command.append("--resume")
    print(f"[cifar] {label} {budget} s seed {seed}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"[cifar] {label}: done in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def ranked(labels: list[str], budget: int) -> list[tuple[str, float]]:
    """Labels by final validation accuracy at ``budget`` (seed 0), best first."""
    scores = [(label, _metrics(folder(label, budget, 0))["final_val_accuracy"]) for label in labels
              if (folder(label, budget, 0) / "metrics.json").is_file()]
    return sorted(scores, key=lambda item: -item[1])


def survivors(round_: int) -> list[str]:
    """The candidates of a round: all in round 1, then the best ``3 - round`` of each family of the round before."""
    if round_ == 1:
        return list(CANDIDATES)
    keep = {2: 2, 3: 1}[round_]
    previous = ranked(survivors(round_ - 1), ROUNDS[round_ - 1])
    chosen = []
    for family in ("vit", "cct"):
        chosen += [label for label, _ in previous if CANDIDATES[label][1] == family][:keep]
    return chosen


def search(rounds: list[int], only: list[str] | None = None) -> None:
    """Run the search's rounds; ``only`` restricts them to those candidates (e.g. new ones added to a finished
    first round, judged against the runs already recorded)."""
    for round_ in rounds:
        seeds = (0, 1) if round_ == 3 else (0,)
        for label in survivors(round_):
            if only is not None and label not in only:
                continue
            model, _, flags = CANDIDATES[label]
            for seed in seeds:
                train(label, model, flags, ROUNDS[round_], seed, "cifar-search")
        print(f"[cifar] round {round_} ({ROUNDS[round_]} s) by validation accuracy: "
              + ", ".join(f"{label} {100 * acc:.2f} %" for label, acc in ranked(survivors(round_), ROUNDS[round_])),
              flush=True)


def crossover(models: list[str], budgets: list[int], seeds: list[int] | None = None) -> None:
    """Train the crossover's runs, short budgets first; ``seeds`` (default :data:`SEEDS`) outer to models, so a
    partial study already has one seed of every model at a budget before any second seed."""
    for budget in budgets:  # short budgets first: a partial study already has every model's early points
        budget_seeds = seeds if seeds is not None else SEEDS.get(budget, (0,))
        for seed in budget_seeds:
            for label in models:
                model, flags = CROSSOVER_RUNS[label]
                if seeds is None and seed != 0 and model == "resnet18" and budget == 1800:
                    continue  # one seed of ResNet-18 at 30 minutes (see SEEDS)
                train(label, model, flags, budget, seed, "cifar-crossover")


def status() -> None:
    for out in sorted(RUNS.glob("*")):
        if (out / "metrics.json").is_file():
            m = _metrics(out)
            print(f"{out.name:32s} test {100 * m['test_accuracy']:6.2f} %  val {100 * m['final_val_accuracy']:6.2f} %"
                  f"  {m['epochs']:3d} ep  {m['train_time_s']:7.0f} s  {m['precision']}")
        else:
            print(f"{out.name:32s} unfinished")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    search_parser = sub.add_parser("search")
    search_parser.add_argument("--round", type=int, nargs="*", default=[1, 2, 3], choices=[1, 2, 3])
    search_parser.add_argument("--only", nargs="+", default=None, choices=list(CANDIDATES), metavar="CANDIDATE",
                               help="train only these candidates (default: every survivor of each round)")
    cross = sub.add_parser("crossover")
    cross.add_argument("--models", nargs="*", default=list(CROSSOVER_RUNS), choices=list(CROSSOVER_RUNS))
    cross.add_argument("--budgets", type=int, nargs="*", default=list(CROSSOVER_BUDGETS))
    cross.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="seeds to train for every model at every budget given (default: two up to 30 minutes, "
                            "one at 60, one for ResNet-18 at 30)")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    if args.command == "search":
        search(args.round, args.only)
    elif args.command == "crossover":
        crossover(args.models, args.budgets, args.seeds)
    else:
        status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
