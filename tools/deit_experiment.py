"""The report's DeiT experiment (issue: DeiT; lesson 13): does a CNN teacher help a ViT on little data?

On one dataset, with one recipe and the same number of epochs for every student (equal budget in
optimizer steps; each run's wall time is recorded too, as distillation adds the teacher's forward pass):

1. the **teacher**, a CNN (MNIST: the small CNN; CIFAR-10: ResNet-18), trained first;
2. the **ViT** from scratch (``vit_mnist`` / ``vit_cifar_small``);
3. **DeiT without a teacher** (``deit_*``: both heads learn from the labels);
4. **DeiT soft**: the distillation head matches the teacher's probabilities (alpha 0.5, T 1);
5. **DeiT hard**: the distillation head learns the teacher's decisions (alpha 0.5).

``--subset N`` gives the students only N labelled images (the teacher is trained on all of them, or is
``--teacher-run``, e.g. the shipped ``weights/mnist-teacher-simple_cnn``): a teacher that has seen more data
than the student. The soft student then uses DeiT's own soft setting (``--soft-tau 3 --soft-alpha 0.1``).
On MNIST that alone is not enough for a gain (lesson 13): the teacher's decisions are the labels.

``--label-noise F`` gives a fraction F of the students' labels a wrong class (``vitlab.data.noisy_labels``;
validation and test keep the true labels): the teacher then knows the images better than their labels do,
DeiT's argument for hard distillation (a strongly augmented crop or a CutMix collage that its label no
longer describes), made measurable on MNIST, whose mild augmentation never changes what a digit is.

Every run is an ordinary ``vitlab train`` run folder (its command is in its config.json)::

    python tools/deit_experiment.py --dataset mnist --out runs/deit --seeds 0 1
    python tools/deit_experiment.py --dataset cifar10 --out runs/deit --device cuda --workers 4
    python tools/deit_experiment.py --dataset mnist --subset 1000 --epochs 40 --seeds 0 1 2 \
        --teacher-run weights/mnist-teacher-simple_cnn --soft-tau 3 --soft-alpha 0.1 --out runs/deit-few
    python tools/deit_experiment.py --dataset mnist --subset 1000 --epochs 200 --batch-size 32 --lr 1e-3 \
        --seeds 0 1 2 --teacher-run weights/mnist-teacher-simple_cnn --soft-tau 3 --soft-alpha 0.1 \
        --experiment deit-few-long --out runs/deit-few-long --workers 2
    python tools/deit_experiment.py --dataset mnist --subset 1000 --label-noise 0.4 --epochs 200 --batch-size 32 \
        --lr 1e-3 --seeds 0 1 2 --teacher-run weights/mnist-teacher-simple_cnn --soft-tau 3 --soft-alpha 0.1 \
        --experiment deit-noisy --out runs/deit-noisy --workers 2

Finished runs are skipped, so an interrupted experiment continues where it stopped.
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

SETTINGS: dict[str, dict[str, Any]] = {
    "mnist": {"teacher": "simple_cnn", "vit": "vit_mnist", "deit": "deit_mnist", "teacher_epochs": 10, "epochs": 5,
              "recipe": {"lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 1.0, "augment": "digits",
                         "label_smoothing": 0.0, "batch_size": 128}},
    "cifar10": {"teacher": "resnet18", "vit": "vit_cifar_small", "deit": "deit_cifar_small", "teacher_epochs": 10,
                "epochs": 10, "recipe": {"lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0, "augment": "cifar",
                                         "label_smoothing": 0.1, "batch_size": 128}},
}


def run_one(job: dict[str, Any]) -> tuple[str, float, float]:
    """One run (in its own process when the parent runs several at a time)."""
    import torch

    from vitlab.engine.classify import train_run
    from vitlab.runfolder import Run

    torch.set_num_threads(job["threads"])
    run = Run(job["out"])
    if not run.is_finished():
        train_run(job["model"], job["dataset"], job["out"], recipe=job["recipe"], seed=job["seed"],
                  device=job["device"], progress=False, verbose=False, resume=run.has_state(), command=job["command"],
                  experiment=job["experiment"], subset=job["subset"], label_noise=job["label_noise"])
    metrics = run.metrics()
    return run.name, metrics["test_accuracy"], metrics["train_time_s"]


def job(model: str, dataset: str, out: Path, recipe: dict[str, Any], seed: int, device: str, threads: int,
        subset: int | None = None, experiment: str = "deit", label_noise: float = 0.0) -> dict[str, Any]:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items())
    command = (f"vitlab train --model {model} --dataset {dataset} {flags} --seed {seed} --device {device} --out {out}"
               + (f" --subset {subset}" if subset else "") + (f" --label-noise {label_noise:g}" if label_noise else "")
               + f" --experiment {experiment}")
    return {"model": model, "dataset": dataset, "out": str(out), "recipe": recipe, "seed": seed, "device": device,
            "threads": threads, "command": command, "subset": subset, "experiment": experiment,
            "label_noise": label_noise}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=list(SETTINGS), required=True)
    parser.add_argument("--out", default="runs/deit")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every student (default: per dataset)")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="student runs at a time")
    parser.add_argument("--subset", type=int, default=None, help="labelled training images of every student")
    parser.add_argument("--teacher-run", default=None, help="a trained teacher's run folder (default: train one)")
    parser.add_argument("--soft-tau", type=float, default=1.0, help="temperature of the soft student")
    parser.add_argument("--soft-alpha", type=float, default=0.5, help="weight of the soft student's teacher term")
    parser.add_argument("--batch-size", type=int, default=None, help="students' batch size")
    parser.add_argument("--lr", type=float, default=None, help="students' peak learning rate")
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="fraction of the students' training labels made wrong (the teacher's are not)")
    parser.add_argument("--experiment", default="deit", help="the runs' experiment tag")
    args = parser.parse_args(argv)

    setting = SETTINGS[args.dataset]
    out = Path(args.out)
    started = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    if args.teacher_run:
        teacher_out = Path(args.teacher_run)
    else:
        teacher_out = out / f"{args.dataset}-teacher-{setting['teacher']}"
        teacher_recipe = {**setting["recipe"], "epochs": args.teacher_epochs or setting["teacher_epochs"]}
        name, accuracy, seconds = run_one(job(setting["teacher"], args.dataset, teacher_out, teacher_recipe, 0,
                                              args.device, os.cpu_count() or 1, experiment=args.experiment))
        print(f"{name}: {100 * accuracy:.2f}% ({seconds:.0f} s training)", flush=True)

    epochs = args.epochs or setting["epochs"]
    student_recipe = {**setting["recipe"], "epochs": epochs,
                      **({"batch_size": args.batch_size} if args.batch_size else {}),
                      **({"lr": args.lr} if args.lr else {})}
    students = {"vit": (setting["vit"], {}), "deit-none": (setting["deit"], {}),
                "deit-soft": (setting["deit"], {"teacher": teacher_out, "distill": "soft",
                                                "distill_tau": args.soft_tau, "distill_alpha": args.soft_alpha}),
                "deit-hard": (setting["deit"], {"teacher": teacher_out, "distill": "hard"})}
    prefix = (f"{args.dataset}-{args.subset}" if args.subset else args.dataset) \
        + (f"-noise{round(100 * args.label_noise)}" if args.label_noise else "")
    jobs = [job(model, args.dataset, out / f"{prefix}-{kind}-s{seed}",
                {**student_recipe, **{k: str(v) if isinstance(v, Path) else v for k, v in extra.items()}}, seed,
                args.device, threads, args.subset, args.experiment, args.label_noise)
            for seed in args.seeds for kind, (model, extra) in students.items()]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for name, accuracy, seconds in pool.map(run_one, jobs):
            print(f"{name}: {100 * accuracy:.2f}% ({seconds:.0f} s training; {time.perf_counter() - started:.0f} s "
                  "since the start)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
