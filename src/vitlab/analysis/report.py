"""Build the results report (``reports/REPORT.md`` and ``REPORT.html``) from run folders.

``vitlab report runs/a runs/b ... --out reports/`` reads each run's ``config.json``,
``metrics.json`` and ``history.csv``, copies those three files into ``reports/runs/NAME/``
(so every number in the report is traceable inside the repository), draws the figures, and
writes the report: methodology, one results table per dataset, curves, per-class
comparisons, and conclusions computed from the numbers (never typed in by hand).

Every run is read through its typed schema (:class:`~vitlab.runfolder.schema.RunConfig`,
:class:`~vitlab.runfolder.schema.RunMetrics`: the entries' ``record`` and ``summary``), and each section is
chosen by what the runs are (their task, method, start and results), not by their experiment tags: DINO
pretraining (``method`` dino), fine-tuning from it with few labels (an ``init`` whose run was DINO's),
early exits (an accuracy-compute curve in the results), segmentation and detection (``task``), transfer
(a class subset). Every fact a sentence states about a run is read from that run.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import platform
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import mistune
import torch

from ..core.io import atomic_write, repository_candidates
from ..models.registry import family_class, get_model
from ..runfolder.run import Run, RunError
from ..runfolder.schema import RunConfig, source_kind
from .plots import plot_per_class
from .robustness import mean_corruption_error

__all__ = ["load_runs", "recorded_runs", "build_report", "machine_class", "recipe_changes"]


def load_runs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Read finished run folders (through :class:`vitlab.runfolder.Run`). Each entry: name, path, config,
    metrics, history, and the typed ``record`` (:class:`~vitlab.runfolder.schema.RunConfig`) and ``summary``
    (:class:`~vitlab.runfolder.schema.RunMetrics`) of the two JSON files."""
    runs = []
    for path in paths:
        run = Run(path)
        if not run.exists() or not run.is_finished():
            raise RunError(f"{run.path} is not a finished run folder (needs config.json and metrics.json)")
        runs.append({"name": run.name, "path": run.path, "config": run.config(), "metrics": run.metrics(),
                     "history": run.history(missing_ok=True), "record": run.record(), "summary": run.summary()})
    return runs


def recorded_runs(dataset: str | None = None, experiment: str | None = None) -> list[dict[str, Any]]:
    """The runs behind the committed report (``reports/runs/*``), optionally only one dataset's.

    ``experiment``: only the runs of that experiment (``config.json``'s ``experiment``, e.g. ``"deit"``);
    by default only runs that belong to none, so a lesson reading the baseline comparison does not
    pick up an experiment's runs of the same models. Lessons use these to show the measured
    comparison without retraining every model.
    """
    candidates = repository_candidates("reports/runs")
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"no recorded runs (looked in {', '.join(str(c) for c in candidates)}); "
                                "they are committed in the repository's reports/runs/ folder")
    runs = load_runs(sorted(p for p in folder.iterdir() if (p / "metrics.json").is_file()))
    return [r for r in runs if (dataset is None or r["summary"].dataset == dataset)
            and r["record"].experiment == experiment]


def _family(run: dict[str, Any]) -> str:
    """The family as the table shows it: ``ViT``, ``CNN``, or a new family's registered name."""
    family = run["config"]["model"]["family"]
    return {"vit": "ViT", "cnn": "CNN", "swin": "Swin", "deit": "DeiT"}.get(family, family)


def _model_label(run: dict[str, Any]) -> str:
    """The model's name, plus how it was taught when a teacher was involved (e.g.
    ``deit_mnist (hard distillation from mnist-simple_cnn)``), and ``(bf16)`` for a run computed in bf16."""
    train = run["config"].get("train", {})
    name = run["metrics"]["model"]
    if str(run["metrics"].get("precision", "")).startswith("bf16"):
        name = f"{name} (bf16)"
    if train.get("distill", "none") != "none":
        teacher = str(train.get("teacher", "?")).rstrip("/").split("/")[-1]
        return f"{name} ({train['distill']} distillation from {teacher})"
    if run["config"]["model"].get("family") == "deit":
        return f"{name} (no teacher)"
    return name


def _accuracies_by_label(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Test accuracies (%) of the runs, grouped by model label (one entry per seed)."""
    by_label: dict[str, list[float]] = {}
    for run in runs:
        by_label.setdefault(_model_label(run), []).append(100 * run["metrics"]["test_accuracy"])
    return by_label


#: Recipe fields that do not make two runs different settings: the seed itself, and what follows from it
#: or only changes speed (a time budget plans ``epochs`` from each run's own measured step; the training
#: engine's ``SPEED_ONLY_FIELDS``, which this floor cannot import, are listed again and tested to match).
_NOT_A_SETTING = ("seed", "eval_batch_size", "compile", "memory_format")


def _setting(run: dict[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two runs to be seeds of one setting: the model label, the dataset size, the time
    budget, the model's config, and every recipe field but the seed (``epochs`` and ``max_steps_per_epoch`` too
    when there is no budget: a budget plans them from each run's own measured step)."""
    budget = run["metrics"].get("time_budget_s")
    train = run["config"].get("train", {})
    planned = ("epochs", "max_steps_per_epoch")  # what a budget plans from each run's own step measurement
    recipe = tuple(sorted((k, str(v)) for k, v in train.items()
                          if k not in _NOT_A_SETTING and not (budget and k in planned)))
    architecture = run["config"].get("model", {}).get("config") or {}  # e.g. --model-arg pool=mean
    recipe += tuple(sorted((k, str(v)) for k, v in architecture.items()))
    return (_model_label(run), run["metrics"].get("train_n"), budget, recipe)


def _setting_labels(settings: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """A label per setting: the model label, plus what tells it apart from the other settings of the same model
    (its budget in minutes, the recipe fields that differ)."""
    labels = {}
    for key in settings:
        others = [k for k in settings if k[0] == key[0] and k != key]
        parts = []
        if any(k[1] != key[1] for k in others) and key[1]:
            parts.append(f"{key[1]:,} training images")
        if any(k[2] != key[2] for k in others) and key[2]:
            parts.append(f"{key[2] / 60:g} min")
        differing = {name for k in others for name, value in set(k[3]) ^ set(key[3])}
        parts += [f"{name} {value}" for name, value in key[3] if name in differing]
        labels[key] = key[0] + (f" ({', '.join(parts)})" if parts else "")
    return labels


def _seed_summary(group: list[dict[str, Any]]) -> list[str]:
    """Mean ± standard deviation over seeds for every setting (model and recipe) that ran with several seeds
    (else nothing). Runs of one model with different budgets or recipes are different settings, never seeds."""
    settings: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for run in group:
        settings.setdefault(_setting(run), []).append(run)
    if all(len(runs) < 2 for runs in settings.values()):
        return []
    labels = _setting_labels(list(settings))
    lines = ["", "Mean over seeds (the spread is the standard deviation between seeds; only runs that differ by "
             "their seed alone):", "", "| model | seeds | mean test accuracy | spread |", "|---|---:|---:|---:|"]
    accuracies = {key: [100 * r["metrics"]["test_accuracy"] for r in runs] for key, runs in settings.items()
                  if len(runs) >= 2}
    for key, values in sorted(accuracies.items(), key=lambda kv: -_mean_std(kv[1])[0]):
        mean, std = _mean_std(values)
        lines.append(f"| {labels[key]} | {len(values)} | {mean:.2f} % | {std:.2f} |")
    return lines


def _teacher_names(group: list[dict[str, Any]]) -> set[str]:
    """Run names (folder names) of the teachers the group's runs distilled from."""
    return {str(r["config"]["train"]["teacher"]).rstrip("/").split("/")[-1] for r in group
            if r["config"].get("train", {}).get("teacher")}


def _distillation_lines(group: list[dict[str, Any]]) -> list[str]:
    """For a group with distilled students: each student's mean gain over the plain ViT of the group, and
    whether any beat its teacher (means over seeds, with the seed count)."""
    distilled = [r for r in group if r["config"].get("train", {}).get("distill", "none") != "none"]
    if not distilled:
        return []
    teachers = [r for r in group if r["name"] in _teacher_names(distilled)]
    plain = [r for r in group if r["config"]["model"].get("family") == "vit"]
    by_label = _accuracies_by_label([run for run in group if run not in teachers])
    lines = []
    if plain:
        base_label = _model_label(plain[0])
        base, _ = _mean_std(by_label[base_label])
        gains = [f"{label} {mean - base:+.2f} points ({len(values)} seed{'s' if len(values) > 1 else ''})"
                 for label, values in by_label.items() if label != base_label
                 for mean in [_mean_std(values)[0]]]
        lines.append(f"Against the plain ViT ({base_label}, {base:.2f} % on average): " + "; ".join(gains) + ".")
    for teacher in teachers:
        accuracy = 100 * teacher["metrics"]["test_accuracy"]
        best_label, best_values = max(by_label.items(), key=lambda kv: _mean_std(kv[1])[0])
        best = _mean_std(best_values)[0]
        verdict = "beats" if best > accuracy else "does not beat"
        lines.append(f"The teacher ({_model_label(teacher)}, run `{teacher['name']}`) scored {accuracy:.2f} %; "
                     f"the best student on average ({best_label}, {best:.2f} %) {verdict} it.")
    return lines


def _is_transformer_family(family: str) -> bool:
    """Whether a model family is a transformer (its registered class says ``is_transformer``, else whether it
    has attention maps); a family this installation does not know is not."""
    try:
        cls = family_class(family)
        return bool(getattr(cls, "is_transformer", cls.has_attention_maps))
    except ValueError:
        return False


def _is_transformer(run: dict[str, Any]) -> bool:
    """Whether the run's model family is a transformer (:func:`_is_transformer_family`)."""
    return _is_transformer_family(run["config"]["model"]["family"])


def _fmt_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _throughput(run: dict[str, Any]) -> float | None:
    values = [row.get("train_images_per_s") for row in run["history"] if row.get("train_images_per_s")]
    return sorted(values)[len(values) // 2] if values else None


def _mflops(run: dict[str, Any]) -> float | None:
    """Forward MFLOPs per image, as counted at training time (``metrics.json``'s ``flops``)."""
    flops = run["metrics"].get("flops")
    return flops / 1e6 if flops else None


def _cifar_note(runs: list[dict[str, Any]]) -> str:
    """What the CIFAR-10 runs were trained on: the 12,000-image subset and/or the full set."""
    names = {r["config"].get("dataset", {}).get("name") for r in runs}
    notes = []
    subset = [r["record"].dataset for r in runs if r["record"].dataset.name == "cifar10-subset"]
    if subset:
        data = subset[0]
        train = (data.train_n or 0) + (data.val_n or 0)
        classes = len(data.classes) or 1
        notes.append(f" `cifar10-subset` is a {train + (data.test_n or 0):,}-image subset of CIFAR-10 "
                     f"({train // classes:,} training and {(data.test_n or 0) // classes:,} test images per class) "
                     "decoded from JPEGs, not the official files, so its numbers are not comparable with published "
                     "CIFAR-10 results.")
    if "cifar10" in names:
        sources = sorted({source_kind(r["record"].dataset.source) or "source not recorded" for r in runs
                          if r["record"].dataset.name == "cifar10"})
        notes.append(f" `cifar10` was loaded from: {'; '.join(sources)}.")
    return "".join(notes)


def _recipe_text(run: dict[str, Any]) -> str:
    train = run["config"]["train"]
    parts = [f"{train['optimizer']} lr {train['lr']:g}", f"wd {train['weight_decay']:g}",
             f"warmup {train['warmup_epochs']:g} ep + cosine", f"batch {train['batch_size']}",
             f"augment {train['augment']}"]
    if train.get("label_smoothing"):
        parts.append(f"label smoothing {train['label_smoothing']:g}")
    return ", ".join(parts) + f", {_amount_trained(run)}"


def _train_n(run: dict[str, Any]) -> int | None:
    """Training-set size: from metrics.json, or from config.json for runs made before it was recorded there."""
    return run["metrics"].get("train_n") or run["config"].get("dataset", {}).get("train_n")


def _amount_trained(run: dict[str, Any]) -> str:
    """How much training a run did: whole epochs, or shortened epochs as steps and epoch equivalents."""
    train, metrics = run["config"]["train"], run["metrics"]
    epochs = metrics.get("epochs", train["epochs"])
    steps = train.get("max_steps_per_epoch")
    if not steps:
        return f"{epochs} epoch{'s' if epochs != 1 else ''}"
    train_n = _train_n(run)
    equivalent = f" ≈ {epochs * steps * train['batch_size'] / train_n:.2f} epochs" if train_n else ""
    return f"{epochs} × {steps} steps{equivalent}"


def _figures(runs: list[dict[str, Any]], dataset: str, out: Path) -> list[str]:
    matplotlib.use("Agg")


    made = []
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in runs:
        history = run["history"]
        if not history:
            continue
        elapsed, total = [], 0.0
        for row in history:
            total += row.get("epoch_time_s", 0.0)
            elapsed.append(total / 60)
        label = f"{run['metrics']['model']} ({run['name']})"
        axes[0].plot(elapsed, [row["train_loss"] for row in history], "-o", markersize=3, label=label)
        if all("val_accuracy" in row for row in history):
            axes[1].plot(elapsed, [100 * row["val_accuracy"] for row in history], "-o", markersize=3, label=label)
    axes[0].set(xlabel="training time (min)", ylabel="training loss", title="Training loss", yscale="log")
    axes[1].set(xlabel="training time (min)", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{dataset}: curves against wall-clock time")
    fig.tight_layout()
    name = f"figures/{slug}-curves.png"
    atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    made.append(name)

    classes = list(runs[0]["metrics"]["per_class_accuracy"])
    models = [_model_label(r) for r in runs]
    per_class = {(m if models.count(m) == 1 else f"{m} [{r['name']}]"):
                 list(r["metrics"]["per_class_accuracy"].values())
                 for m, r in zip(models, runs)}
    fig = plot_per_class(per_class, classes, title=f"{dataset}: test accuracy per class")
    name = f"figures/{slug}-per-class.png"
    atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    made.append(name)
    return made


def _confused_pairs(run: dict[str, Any], top: int = 3) -> list[tuple[str, str, int]]:
    confusion = run["metrics"]["confusion"]
    classes = list(run["metrics"]["per_class_accuracy"])
    pairs = [(classes[i], classes[j], confusion[i][j]) for i in range(len(classes)) for j in range(len(classes))
             if i != j and confusion[i][j] > 0]
    return sorted(pairs, key=lambda p: -p[2])[:top]


def _conclusions(dataset: str, rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    best = max(rows, key=lambda r: r["accuracy"])
    lines.append(f"Best test accuracy on {dataset}: **{best['model']}**, {best['accuracy']:.2f} % "
                 f"(run `{best['run']}`).")
    vits = [r for r in rows if r["transformer"]]
    cnns = [r for r in rows if not r["transformer"]]  # every convolutional family: cnn, cifar_resnet, ...
    if vits and cnns:
        v = max(vits, key=lambda r: r["accuracy"])
        c = max(cnns, key=lambda r: r["accuracy"])
        gap = v["accuracy"] - c["accuracy"]
        relation = "above" if gap > 0 else "below" if gap < 0 else "level with"
        lines.append(f"The best transformer ({v['model']}, {v['accuracy']:.2f} %) is {abs(gap):.2f} percentage points "
                     f"{relation} the best CNN ({c['model']}, {c['accuracy']:.2f} %), "
                     f"with {v['params'] / max(c['params'], 1):.2f}x its parameters.")
        budgeted = [r for r in rows if r.get("time_budget_s")]
        budgets = {r["time_budget_s"] for r in budgeted}
        if len(budgets) == 1 and len(budgeted) >= 2 and len({r["machine"] for r in budgeted}) == 1:
            budget = budgets.pop()
            spent = [r["train_time_s"] for r in budgeted]
            lines.append(f"{len(budgeted)} models were given the same wall-clock training budget of {budget:.0f} s "
                         "on the same machine (--time-budget), so the comparison is accuracy per unit of CPU time. "
                         "The number of epochs is planned from a measured step time, so the time actually spent "
                         f"ranged from {min(spent):.0f} to {max(spent):.0f} s. In that budget "
                         + "; ".join(f"{r['model']} completed {r['epochs_done']}" for r in budgeted) + ".")
            others = [r["model"] for r in rows if not r.get("time_budget_s")]
            if others:
                lines.append(f"{', '.join(others)} trained for a fixed number of epochs instead (not budgeted).")
        elif len(students := [r for r in rows if r["run"].split("/")[-1] not in _teacher_names(runs)]) > 1 and \
                len({r["epochs_done"] for r in students if not r["time_budget_s"]}) == 1:
            lines.append(f"Every student trained the same amount ({students[0]['epochs_done']}): equal optimizer "
                         "steps, not equal time (see the training column for the time each took; a distilled step "
                         "also runs the teacher).")
        else:
            lines.append("Training times differ between runs (see the table): compare accuracy together with time.")
    # Speeds compare only within one machine: runs recorded on two machines get a range each.
    speeds = [r for r in rows if r["images_per_s"]]
    machines = sorted({r["machine"] for r in rows})
    for machine in machines:
        on_it = [r for r in speeds if r["machine"] == machine]
        if len(on_it) < 2:
            continue
        fast = max(on_it, key=lambda r: r["images_per_s"])
        slow = min(on_it, key=lambda r: r["images_per_s"])
        lines.append(f"Training throughput ({machine}) ranged from {slow['images_per_s']:,.0f} images/s "
                     f"({slow['model']}) to {fast['images_per_s']:,.0f} images/s ({fast['model']}), a factor of "
                     f"{fast['images_per_s'] / slow['images_per_s']:.1f}.")
    if len(machines) > 1:
        and_budgets = " and time-budgeted accuracies" if any(r.get("time_budget_s") for r in rows) else ""
        lines.append(f"These runs were recorded on {len(machines)} machine classes ({'; '.join(machines)}): compare "
                     f"speeds{and_budgets} only within one.")
    lines += _distillation_lines(runs)
    seeded = len({_model_label(run) for run in runs}) < len(runs)  # several seeds of a model: say which one
    for run in runs:
        pairs = _confused_pairs(run)
        if pairs:
            which = f" (seed {run['metrics'].get('seed')})" if seeded else ""
            lines.append(f"{_model_label(run)}{which}'s most frequent confusions (true → predicted): "
                         + ", ".join(f"{a} → {b} ({n})" for a, b, n in pairs) + ".")
    return lines


TRANSFER_METHODS = ("from scratch", "linear probe", "fine-tune", "fine-tune + layer decay")


def _is_transfer(run: dict[str, Any]) -> bool:
    """Runs on a chosen subset of a dataset's classes (``--classes``): a transfer experiment's pretraining
    and target runs, reported in their own section rather than beside whole-dataset runs."""
    return bool(run["config"].get("dataset", {}).get("class_subset"))


def _transfer_method(run: dict[str, Any]) -> str:
    train = run["config"]["train"]
    if "init" not in run["config"]:
        return "from scratch"
    if train.get("freeze") == "backbone":
        return "linear probe"
    return "fine-tune + layer decay" if train.get("layer_decay", 1.0) < 1.0 else "fine-tune"


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def _transfer_section(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Pretraining runs, then a table (labelled images x method, mean ± std over seeds), a figure and
    conclusions computed from the numbers, for runs made with ``--classes``."""
    matplotlib.use("Agg")

    targets = [r for r in runs if "init" in r["config"] or any(
        "init" in o["config"] and o["config"]["dataset"]["class_subset"] == r["config"]["dataset"]["class_subset"]
        for o in runs)]
    sources = [r for r in runs if r not in targets]
    md = ["### Transfer learning", ""]
    for run in sources:
        m, data = run["metrics"], run["config"]["dataset"]
        md.append(f"- Pretraining `{run['name']}`: {m['model']} with labels on {', '.join(data['class_subset'])} "
                  f"({_train_n(run):,} training images): **{100 * m['test_accuracy']:.2f} %** on their "
                  f"{m['test_n']:,} test images after {_amount_trained(run)} ({_fmt_time(m['train_time_s'])}, "
                  f"{m.get('device', '?')}). Command: `{m.get('command', '?')}`")
    if not targets:
        return md + [""]
    pool = max(_train_n(r) + r["config"]["dataset"].get("val_n", 0) for r in targets)
    cells: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for run in targets:
        cells.setdefault((_train_n(run), _transfer_method(run)), []).append(run)
    sizes = sorted({n for n, _ in cells})
    methods = [m for m in TRANSFER_METHODS if any(k[1] == m for k in cells)]
    first = targets[0]
    budgets = sorted({r["metrics"].get("time_budget_s") for r in targets}, key=str)
    md += ["", f"Target task: {', '.join(first['config']['dataset']['class_subset'])} "
           f"(test set: {first['metrics']['test_n']:,} images). Test accuracy, mean ± standard deviation over "
           f"seeds (number of seeds in brackets); every run had the same wall-clock training budget "
           f"({', '.join(f'{b:g} s' if b else 'none' for b in budgets)}) on {first['metrics'].get('device', '?')}.",
           "", f"Labelled images are counted against the {pool:,} training images of the target classes; "
           f"{first['config']['dataset'].get('val_n', 0):,} of them are the validation split, which only watched "
           "training, so the largest row holds every label a run could train on.",
           "", "| labelled images | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    summary: dict[tuple[int, str], float] = {}
    for n in sizes:
        row = [f"{n:,} ({100 * n / pool:.0f} %)"]
        for method in methods:
            group = cells.get((n, method), [])
            if not group:
                row.append("–")
                continue
            mean, std = _mean_std([100 * r["metrics"]["test_accuracy"] for r in group])
            summary[(n, method)] = mean
            row.append(f"{mean:.2f} ± {std:.2f} ({len(group)})" if len(group) > 1 else f"{mean:.2f} (1)")
        md.append("| " + " | ".join(row) + " |")
    md += ["", "Epochs each run fitted into that budget (range over seeds): a linear probe has no backward pass "
           "through the backbone, so its steps are cheaper.", "",
           "| labelled images | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for n in sizes:
        row = [f"{n:,}"]
        for method in methods:
            epochs = sorted(r["metrics"]["epochs"] for r in cells.get((n, method), []))
            row.append("–" if not epochs else f"{epochs[0]}–{epochs[-1]}" if epochs[0] != epochs[-1] else
                       f"{epochs[0]}")
        md.append("| " + " | ".join(row) + " |")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method in methods:
        points = [(n, _mean_std([100 * r["metrics"]["test_accuracy"] for r in cells[(n, method)]]))
                  for n in sizes if (n, method) in cells]
        ax.errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points], marker="o",
                    capsize=3, label=method)
    ax.set(xscale="log", xlabel="labelled training images of the target classes (log scale)",
           ylabel="test accuracy (%)", title="Transfer to new classes: accuracy against labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    name = "figures/transfer-labels.png"
    atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    md += ["", f"![transfer: accuracy against labels]({name})", "", "**What the numbers say**", ""]
    for n in sizes:
        present = {m: summary[(n, m)] for m in methods if (n, m) in summary}
        best = max(present, key=present.get)
        line = f"With {n:,} labelled images the best is {best} ({present[best]:.2f} %)"
        if "from scratch" in present and best != "from scratch":
            line += f", {present[best] - present['from scratch']:.2f} points above training from scratch"
        md.append(f"- {line}.")
    md += ["", "Commands (one per run; each is also in the run's `metrics.json`):", ""]
    md += [f"- `{r['name']}`: `{r['metrics'].get('command', '?')}`" for r in sorted(targets, key=lambda r: r["name"])]
    return md + [""]


#: Lesson 15's experiments: reported in their own section, not beside the whole-dataset comparison.
def _self_distillation_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lesson 15's runs, by what they are: DINO pretraining, early-exit models (their results hold an
    accuracy-compute curve), the runs fine-tuned from a DINO run of the set (or whose ``init`` says it was
    DINO's), and the runs from scratch on the same labelled subsets (their baselines)."""
    dino = {r["name"] for r in runs if r["record"].method == "dino"}

    def from_dino(run: dict[str, Any]) -> bool:
        init = run["record"].init
        return init is not None and (init.method == "dino" or Path(init.spec).name in dino)

    tuned = [r for r in runs if from_dino(r)]
    subsets = {(r["record"].dataset.name, r["record"].dataset.subset) for r in tuned}
    return [r for r in runs if r["name"] in dino or r["summary"].get("exit_curve") or r in tuned
            or (r["record"].init is None and r["record"].task == "classify" and r["record"].dataset.subset
                and (r["record"].dataset.name, r["record"].dataset.subset) in subsets)]


def _save_figure(fig: Any, out: Path, name: str) -> str:
    atomic_write(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return name


def _dino_lines(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """DINO pretraining runs: k-NN before and after, linear probe, collapse monitors, and their curves."""
    matplotlib.use("Agg")

    md = ["#### DINO pretraining without labels", "",
          f"k-NN: DINO's weighted {_knn_k(runs)}-nearest-neighbour vote on the teacher's class-token features "
          "(training set -> "
          "test set); the same evaluation on the untrained backbone is the baseline DINO must beat. Linear probe: "
          "a linear classifier trained on the frozen features. Entropies in nats, of log K for K outputs: a "
          "per-image entropy near 0 with a mean-output entropy near 0 is collapse to one output; both near log K "
          "is collapse to the uniform output.", "",
          "| dataset | model | pretraining | k-NN at init | k-NN after | linear probe | teacher entropy / mean "
          "entropy / log K | run |", "|---|---|---|---:|---:|---:|---|---|"]
    for run in runs:
        m = run["metrics"]
        dino, train_n = run["config"]["dino"], run["config"]["dataset"]["train_n"]
        steps = dino.get("max_steps_per_epoch")
        amount = (f"{m['epochs']} × {steps} steps of {dino['batch_size']} images "
                  f"(≈ {m['epochs'] * steps * dino['batch_size'] / train_n:.2f} epochs)" if steps else
                  f"{m['epochs']} epochs of {train_n:,} images")
        at_init = 100 * (m.get("knn_test_accuracy_at_init") or 0)
        md.append(f"| {m['dataset']} | {m['model']} | {amount}, {_fmt_time(m['train_time_s'])} | {at_init:.2f} % "
                  f"| **{100 * m['knn_test_accuracy']:.2f} %** | {100 * m['linear_probe_test_accuracy']:.2f} % | "
                  f"{m['final_teacher_entropy']:.2f} / {m['final_teacher_mean_entropy']:.2f} / {m['log_out_dim']:.2f} "
                  f"| `{out.name}/runs/{run['name']}` |")
    md += ["", "Commands:", ""] + [f"- `{r['name']}`: `{r['metrics'].get('command', '?')}` ({r['metrics']['device']})"
                                   for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        epochs = [row["epoch"] for row in run["history"]]
        label = f"{run['metrics']['model']} on {run['metrics']['dataset']}"
        axes[0].plot(epochs, [100 * row["knn_accuracy"] for row in run["history"]], marker="o", label=label)
        axes[1].plot(epochs, [row["teacher_entropy"] / run["metrics"]["log_out_dim"] for row in run["history"]],
                     marker="o", label=label + ": per image")
        axes[1].plot(epochs, [row["teacher_mean_entropy"] / run["metrics"]["log_out_dim"] for row in run["history"]],
                     marker="x", linestyle="--", label=label + ": of the mean")
    axes[0].set(xlabel="epoch", ylabel="k-NN validation accuracy (%)", title="k-NN on the teacher's features")
    axes[1].set(xlabel="epoch", ylabel="entropy / log K", ylim=(0, 1.05), title="Teacher output entropy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = _save_figure(fig, out, "figures/dino-monitors.png")
    return md + ["", f"![DINO monitors]({name})", ""]


def _few_label_lines(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Fine-tuning a DINO backbone with few labels vs the same model from scratch: mean ± std over seeds."""
    lrs = {(run["record"].init is not None, run["config"]["train"]["lr"]) for run in runs}
    same_recipe = len({lr for _, lr in lrs}) == 1
    steps = {int(sum(row["train_samples"] for row in run["history"]) // run["config"]["train"]["batch_size"])
             for run in runs if run["history"]}
    md = ["#### Few labels: fine-tuning the DINO backbone vs training from scratch", "",
          "Both start from the same architecture and train on the same labelled subset; the DINO runs start from "
          "the pretrained teacher backbone (`--init`). "
          + (f"Both starts use one recipe (learning rate {next(iter(lrs))[1]:g})" if same_recipe
             else "Each start uses its own recipe (learning rates " + ", ".join(sorted(f"{lr:g}" for _, lr in lrs))
             + ")")
          + (f" and the same {next(iter(steps)):,} optimizer steps." if len(steps) == 1 else "."), "",
          "| dataset | labelled images | from scratch | DINO + fine-tune | difference | seeds |",
          "|---|---:|---:|---:|---:|---:|"]
    cells: dict[tuple[str, int], dict[str, list[float]]] = {}
    for run in runs:
        kind = "dino" if run["record"].init is not None else "scratch"
        cell = cells.setdefault((run["metrics"]["dataset"], _train_n(run) or 0), {})
        cell.setdefault(kind, []).append(100 * run["metrics"]["test_accuracy"])
    for (dataset, n), pair in sorted(cells.items()):
        stats = {k: _mean_std(v) for k, v in pair.items()}
        diff = f"{stats['dino'][0] - stats['scratch'][0]:+.2f}" if len(stats) == 2 else "–"
        scratch, dino = (f"{stats[k][0]:.2f} ± {stats[k][1]:.2f} %" if k in stats else "–" for k in ("scratch", "dino"))
        seeds = "/".join(str(len(v)) for v in pair.values())
        md.append(f"| {dataset} | {n:,} | {scratch} | {dino} | {diff} | {seeds} |")
    md += ["", "Commands:", ""] + [f"- `{r['name']}`: `{r['metrics'].get('command', '?')}`"
                                   for r in sorted(runs, key=lambda r: r["name"])]
    return md + [""]


def _exit_lines(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Early-exit runs: accuracy against the blocks run, with measured speed, and the curves."""
    matplotlib.use("Agg")

    md = ["#### Early exits: accuracy against compute", "",
          "Each image leaves at the first exit whose softmax confidence exceeds the threshold (1: never early). "
          "Blocks: the average number of encoder blocks run per test image; images/s: measured real early-exit "
          "inference over the test set (batches of 500, shrinking as images leave).", ""]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in sorted(runs, key=lambda r: r["name"]):
        m, train = run["metrics"], run["config"]["train"]
        curve = m.get("exit_curve") or []
        if not curve:
            continue
        depth = run["config"]["model"]["config"]["depth"]
        kind = "self-distillation" if train.get("distill") == "self" else "labels only"
        label = f"{m['model']} on {m['dataset']}, {kind}"
        md += [f"`{run['name']}` ({label}; final head {100 * m['test_accuracy']:.2f} %, {_amount_trained(run)}, "
               f"{_fmt_time(m['train_time_s'])}; exit heads at blocks "
               f"{run['config']['model']['config']['exit_blocks']} of {depth}):", "",
               "| threshold | test accuracy | blocks per image | compute | images/s |", "|---:|---:|---:|---:|---:|"]
        for row in curve:
            if "images_per_s" in row:
                md.append(f"| {row['threshold']:g} | {100 * row['accuracy']:.2f} % | {row['mean_blocks']:.2f} | "
                          f"{100 * row['compute']:.0f} % | {row['images_per_s']:,.0f} |")
        md += ["", f"Command: `{m.get('command', '?')}`", ""]
        ax.plot([r["mean_blocks"] for r in curve], [100 * r["accuracy"] for r in curve], marker="o", markersize=3,
                label=label)
    ax.set(xlabel="encoder blocks run per image (average)", ylabel="test accuracy (%)",
           title="Early exits: accuracy against compute, threshold swept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = _save_figure(fig, out, "figures/early-exits.png")
    return md + [f"![early exits]({name})", ""]


def _self_distillation_section(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Lesson 15's experiments: DINO pretraining, few-label fine-tuning from it, early exits."""
    md = ["### Self-distillation (lesson 15)", ""]
    dino = [r for r in runs if r["record"].method == "dino"]
    exits = [r for r in runs if r["summary"].get("exit_curve")]
    few = [r for r in runs if r not in dino and r not in exits]
    if dino:
        md += _dino_lines(dino, out)
    if few:
        md += _few_label_lines(few, out)
    if exits:
        md += _exit_lines(exits, out)
    return md


def _is_dense(run: dict[str, Any]) -> bool:
    return run["config"].get("task") in ("segment", "detect")


def _encoder_start(run: dict[str, Any]) -> str:
    init = run["config"].get("init")
    return f"classifier `{Path(init['spec']).name}`" if init else "scratch"


def _split_text(runs: list[dict[str, Any]]) -> str:
    """How the training sets were split, from the runs' recorded ``val_size``."""
    sizes = sorted({r["record"].dataset.val_size for r in runs if r["record"].dataset.canvas is None}, key=str)
    shares = [f"{100 * (1 - v):.0f}/{100 * v:.0f}" if isinstance(v, float) and v < 1 else f"{v:,} validation images"
              for v in sizes]
    split = f"a seeded {' or '.join(shares)} split" if shares else "a seeded split"
    return (f"{split} of the training set for training and validation (the validation set is used only to watch "
            "training).")


def _knn_k(runs: list[dict[str, Any]]) -> str:
    """The k of the DINO runs' k-NN evaluation (``knn_k`` of their recipe)."""
    return "/".join(str(k) for k in sorted({r["record"].dino.get("knn_k", 20) for r in runs}))


def _dense_figure(runs: list[dict[str, Any]], out: Path) -> str:
    """Validation score per epoch (mIoU or mAP@0.5) and the test score per class, one line / bar group per run."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), squeeze=False)
    for row, task, key, per_class, label in ((0, "segment", "val_miou", "per_class_iou", "IoU"),
                                             (1, "detect", "val_map_50", "per_class_ap", "AP@[.5:.95]")):
        group = [r for r in runs if r["config"]["task"] == task]
        ax_curve, ax_class = axes[row]
        for i, run in enumerate(group):
            epochs = [h["epoch"] for h in run["history"]]
            ax_curve.plot(epochs, [100 * h[key] for h in run["history"]], "-o", markersize=3, label=run["name"])
            classes = list(run["metrics"][per_class])
            width = 0.8 / max(len(group), 1)
            ax_class.bar([j + i * width for j in range(len(classes))],
                         [100 * run["metrics"][per_class][c] for c in classes], width, label=run["name"])
            ax_class.set_xticks([j + 0.4 - width / 2 for j in range(len(classes))], classes, fontsize=8)
        ax_curve.set(xlabel="epoch", ylabel=("validation mIoU" if task == "segment" else "validation mAP@0.5") + " (%)",
                     title="Segmentation" if task == "segment" else "Detection")
        ax_class.set(ylabel=f"test {label} (%)", title=f"Test {label} per class")
        for ax in (ax_curve, ax_class):
            ax.grid(alpha=0.3)
            if group:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, out, "figures/dense.png")


def _grid_text(run: dict[str, Any]) -> str | None:
    """``"4×4 position table resampled to 8×8"`` for a dense run whose encoder started from a classifier."""
    record: RunConfig = run["record"]
    if record.init is None or not record.init.config.get("patch_size"):
        return None
    before = record.init.config["image_size"] // record.init.config["patch_size"]
    after = record.model.config["image_size"] // record.model.config["patch_size"]
    return f"{before}×{before} position table resampled to {after}×{after}"


def _dense_section(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Lesson 16's experiments: Segmenter and YOLOS on the MNIST canvases, from scratch or a classifier."""
    canvas = runs[0]["record"].dataset.canvas or {}
    classes = sorted({len(r["record"].dataset.classes) for r in runs if r["record"].task == "segment"})
    grids = sorted({g for g in map(_grid_text, runs) if g})
    start = f" ({'; '.join(grids)})" if grids else ""
    md = ["### Segmentation and detection on MNIST canvases (lesson 16)", "",
          f"Canvases of {canvas.get('canvas_size')}×{canvas.get('canvas_size')} pixels with "
          f"{canvas.get('min_digits')}–{canvas.get('max_digits')} real MNIST digits each "
          f"({canvas.get('min_digit_size')}–{canvas.get('max_digit_size')} px; `vitlab.canvas`), "
          f"{runs[0]['config']['dataset'].get('train_n', 0):,} for training, "
          f"{runs[0]['config']['dataset'].get('test_n', 0):,} test canvases drawn from MNIST's test digits only. "
          f"mIoU is over the {'/'.join(map(str, classes)) or '?'} classes (background and the digits) on all test "
          "pixels together; mAP is COCO's (torchmetrics with pycocotools). \"scratch\" is a random encoder; a "
          f"classifier start copies the encoder of a ViT trained on MNIST digit classification{start}.", ""]
    segment = [r for r in runs if r["config"]["task"] == "segment"]
    detect = [r for r in runs if r["config"]["task"] == "detect"]
    if segment:
        md += ["| run | decoder | encoder start | test mIoU | mIoU (digits only) | pixel accuracy | parameters | "
               "training | train canvases/s |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
        for run in sorted(segment, key=lambda r: -r["metrics"]["test_miou"]):
            m = run["metrics"]
            md.append(f"| `{run['name']}` | {run['config']['model']['config']['decoder']} | {_encoder_start(run)} | "
                      f"**{100 * m['test_miou']:.2f} %** | {100 * m['test_miou_objects']:.2f} % | "
                      f"{100 * m['test_pixel_accuracy']:.2f} % | {m['params']:,} | {_amount_trained(run)}, "
                      f"{_fmt_time(m['train_time_s'])} | {_throughput(run) or 0:,.0f} |")
        md.append("")
    if detect:
        md += ["| run | encoder start | test mAP@[.5:.95] | mAP@0.5 | mAP@0.75 | parameters | training | "
               "train canvases/s |", "|---|---|---:|---:|---:|---:|---|---:|"]
        for run in sorted(detect, key=lambda r: -r["metrics"]["test_map"]):
            m = run["metrics"]
            md.append(f"| `{run['name']}` | {_encoder_start(run)} | **{100 * m['test_map']:.2f} %** | "
                      f"{100 * m['test_map_50']:.2f} % | {100 * m['test_map_75']:.2f} % | {m['params']:,} | "
                      f"{_amount_trained(run)}, {_fmt_time(m['train_time_s'])} | {_throughput(run) or 0:,.0f} |")
        md.append("")
    md += [f"![segmentation and detection]({_dense_figure(runs, out)})", "", "Recipes and commands:", ""]
    for run in runs:
        md.append(f"- `{run['name']}`: {_recipe_text(run)}. Command: `{run['metrics'].get('command', '?')}`")
    return md + [""]


#: CIFAR-10 test accuracies the literature reports for the registered CIFAR models, each with its paper's own
#: full schedule (ResNets: 164 epochs of SGD; CCT: 300 epochs with AutoAugment and CutMix/Mixup), drawn as
#: reference lines beside our budgeted runs. Sources: He et al. 2016 (arXiv:1512.03385), table 6; Hassani et al.
#: 2021 (arXiv:2104.05704), table 2.
PUBLISHED_CIFAR10: dict[str, tuple[float, str]] = {
    "resnet20": (91.25, "He et al. 2016"), "resnet56": (93.03, "He et al. 2016"),
    "cct_2_3x2": (89.75, "Hassani et al. 2021"), "cct_4_3x2": (91.97, "Hassani et al. 2021"),
    "cct_6_3x2": (93.56, "Hassani et al. 2021")}


def _budget_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Classification runs on the full CIFAR-10 training set (45,000 images) trained to a wall-clock budget."""
    return [r for r in runs if r["metrics"]["dataset"] == "cifar10" and r["metrics"].get("time_budget_s")
            and _train_n(r) == 45000 and not _is_transfer(r) and not _is_dense(r)
            and "train" in r["config"] and r["record"].init is None
            and r["config"]["train"].get("distill", "none") == "none"]


def machine_class(metrics: dict[str, Any]) -> str:
    """The machine class a budgeted run measured, from its ``metrics.json``: the precision (bf16 needs AMX or a
    GPU) plus the CPU model or GPU the record names (``cpu (2 cores, AMD EPYC, x86_64)``); records older than the
    CPU's name say only ``cpu (2 cores, x86_64)``, and there bf16 chosen for AMX means an Intel CPU. A budget buys
    2-3x more steps on one 2-core machine than on another, so each class gets its own rows and conclusions."""
    precision = metrics.get("precision") or "fp32"
    short = precision.split(" ")[0]
    device = metrics.get("device", "")
    named = re.fullmatch(r"cpu \(\d+ cores?, (.+), [^,]+\)", device) or re.fullmatch(r"cuda \((.+)\)", device)
    if named:
        return f"{short}, {named.group(1)}"
    return f"{short}, Intel CPU with AMX" if "with AMX" in precision else short


#: The recipe fields the CIFAR-10 search varies besides augmentation (which every row names), with their label.
_SEARCHED_FIELDS = {"lr": "lr", "batch_size": "batch", "label_smoothing": "label smoothing"}
#: Labels of the model config fields it varies (``--model-arg``); any other field that differs is named as it is,
#: except those the dataset sets (a CIFAR-10 run of ResNet-18 is built for 32x32 RGB images and ten classes).
_SIZE_LABELS = {"patch_size": "patch", "dim": "width", "depth": "depth"}
_DATASET_FIELDS = ("image_size", "in_channels", "num_classes")


def recipe_changes(run: dict[str, Any]) -> list[str]:
    """What a run changed from its registered model: its model config against the preset (e.g. ``["depth 4"]``,
    ``["patch 8", "width 96"]``; any field but those the dataset sets, as JSON stores it), then the searched
    recipe fields (learning rate, batch size, label smoothing) against the registered recipe (``["lr 0.002",
    "batch 256"]``); ``[]`` for the registered model and recipe. Only recipe fields the registered model sets are
    compared (ResNet-18 sets none)."""
    entry = get_model(run["metrics"]["model"])
    preset = entry.config.to_dict()   # as config.json stores it (tuples as lists)
    architecture = run["config"].get("model", {}).get("config") or {}
    sizes = [f"{_SIZE_LABELS.get(name, name)} {value}" for name, value in architecture.items()
             if name in preset and name not in _DATASET_FIELDS and value != preset[name]]
    train = run["config"]["train"]
    recipe = entry.recipe
    return sizes + [f"{short} {float(train[name]):g}" for name, short in _SEARCHED_FIELDS.items()
                    if name in recipe and float(train.get(name, recipe[name])) != float(recipe[name])]


def _budget_label(run: dict[str, Any]) -> str:
    """``model (augmentation, machine)``, plus the searched fields where the run changed its registered recipe
    (``cct_2_3x2 (cifar, lr 0.002, batch 256, fp32, AMD EPYC)``, ``vit_cifar_small (cifar, depth 4, ...)``): each
    recipe and size is its own row and curve."""
    changes = "".join(f", {change}" for change in recipe_changes(run))
    return f"{run['metrics']['model']} ({run['config']['train']['augment']}{changes}, {machine_class(run['metrics'])})"


def _time_to_accuracy_section(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """Test accuracy against the wall-clock budget on the full CIFAR-10, per model and recipe, beside the
    published numbers of the literature's CIFAR models, and where (if anywhere) a transformer catches up."""
    cells: dict[str, dict[float, list[float]]] = {}
    transformer: dict[str, bool] = {}
    machine: dict[str, str] = {}
    for run in runs:
        label = _budget_label(run)
        cells.setdefault(label, {}).setdefault(run["metrics"]["time_budget_s"] / 60, []).append(
            100 * run["metrics"]["test_accuracy"])
        transformer[label] = _is_transformer(run)
        machine[label] = machine_class(run["metrics"])
    budgets = sorted({b for by_budget in cells.values() for b in by_budget})
    devices = sorted({r["metrics"].get("device", "?") for r in runs})
    md = ["## Time to accuracy on CIFAR-10", "",
          f"Every run trained on the full CIFAR-10 (45,000 images) to a wall-clock budget, on {', '.join(devices)}; "
          "the number of epochs was planned from the step time measured at the start of each run. Cells give "
          "the test accuracy (mean ± std where there are several seeds; the count in brackets). Each row names "
          "the machine class it was measured on: the precision (bf16: a CPU with AMX; fp32: a CPU without it) "
          "and the CPU model where the run recorded it; a budget buys a different number of steps on each, so "
          "compare a budget across the rows of one machine.", "",
          "| model (augmentation) | " + " | ".join(f"{b:g} min" for b in budgets) + " | published (full schedule) |",
          "|---|" + "---:|" * (len(budgets) + 1)]
    for label, by_budget in sorted(cells.items()):
        row = []
        for b in budgets:
            if b not in by_budget:
                row.append("–")
                continue
            mean, std = _mean_std(by_budget[b])
            row.append(f"{mean:.2f} %" + (f" ± {std:.2f} ({len(by_budget[b])})" if len(by_budget[b]) > 1 else ""))
        model = label.split(" ")[0]
        published = f"{PUBLISHED_CIFAR10[model][0]:.2f} % ({PUBLISHED_CIFAR10[model][1]})" \
            if model in PUBLISHED_CIFAR10 else "–"
        md.append(f"| {label} | " + " | ".join(row) + f" | {published} |")
    fig, ax = plt.subplots(figsize=(10, 4.6))
    # tab20: twenty distinct colours, as the table now has more rows than the default cycle of ten
    published_drawn: set[str] = set()
    for i, (label, by_budget) in enumerate(sorted(cells.items())):
        xs = sorted(by_budget)
        means = [_mean_std(by_budget[x])[0] for x in xs]
        colour = plt.cm.tab20(i % 20)
        ax.plot(xs, means, "-o" if transformer[label] else "-s", color=colour, label=label)
        model = label.split(" ")[0]
        if model in PUBLISHED_CIFAR10 and model not in published_drawn:   # one dotted line per model, not per row
            published_drawn.add(model)
            ax.axhline(PUBLISHED_CIFAR10[model][0], color=colour, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])   # the budgets measured, not 3x10^0-style minor labels
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="training budget (minutes, log scale)", ylabel="test accuracy (%)",
           title="CIFAR-10: accuracy against training time (dotted: published, full schedule)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: many rows
    fig.tight_layout()
    md += ["", f"![CIFAR-10 time to accuracy]({_save_figure(fig, out, 'figures/cifar10-time-to-accuracy.png')})", "",
           "**What the numbers say**", ""]
    machines = sorted(set(machine.values()))
    for name in machines:
        own = {label: v for label, v in cells.items() if machine[label] == name}
        prefix = f"{name}: " if len(machines) > 1 else ""
        crossed = None
        for b in budgets:
            best = {kind: max(((_mean_std(v[b])[0], label) for label, v in own.items()
                               if b in v and transformer[label] == kind), default=None) for kind in (True, False)}
            if best[True] and best[False]:
                md.append(f"- {prefix}{b:g} min: best transformer {best[True][1]} {best[True][0]:.2f} %, best CNN "
                          f"{best[False][1]} {best[False][0]:.2f} % ({best[True][0] - best[False][0]:+.2f} points).")
                if crossed is None and best[True][0] >= best[False][0]:
                    crossed = b
        compared = [b for b in budgets if len({transformer[label] for label, v in own.items() if b in v}) == 2]
        if not compared:
            continue
        md.append(f"- {prefix}The best transformer first matches the best CNN at {crossed:g} min."
                  if crossed is not None else
                  f"- {prefix}No budget measured here where a transformer matches the best CNN"
                  f" ({', '.join(f'{b:g}' for b in compared)} min compared).")
    return md + [""]


def _robustness_records(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``robustness.json`` records (``vitlab robustness``) in ``folder``, by dataset and by model group
    (the file name without its trailing ``-s<seed>``: the seeds of one trained pair)."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        group = re.sub(r"-s\d+$", "", path.stem)
        groups.setdefault(record["dataset"], {}).setdefault(group, []).append(record)
    return groups


#: The curves the robustness section summarises: (test, curve, column title).
ROBUSTNESS_COLUMNS = (("occlusion", "random-pixels", "occlusion (pixels)"),
                      ("occlusion", "random-tokens", "occlusion (tokens)"), ("shuffle", "shuffle", "shuffle"),
                      ("corruptions", "mean", "corruptions (mean)"), ("adversarial", "fgsm", "FGSM"),
                      ("adversarial", "pgd", "PGD"), ("translation", "pad", "translation (pad)"))


def _robustness_section(folder: Path, out: Path) -> list[str]:
    """Accuracy under occlusion, shuffling, corruptions, attacks and shifts: the area under each
    accuracy-vs-level curve (mean ± std over seeds), mCE against the dataset's CNN, and one figure per dataset."""
    datasets = _robustness_records(folder)
    if not datasets:
        return []
    md = ["## Robustness: ViTs against CNNs", "",
          "`vitlab robustness RUN` on each model (every model sees the same seeded test images and the same damage; "
          "the records are in `reports/robustness/`). Each cell is the area under the accuracy-vs-level curve "
          "(levels on their own scale, normalised to [0, 1]: the mean accuracy over the range), in %, mean ± std "
          "over training seeds where a pair was trained more than once. Higher is more robust; read it beside the "
          "clean accuracy. mCE: the mean over corruptions of each one's summed errors over the reference CNN's "
          "(Hendrycks & Dietterich), in %; an unweighted mean of ratios, so one corruption the reference "
          "barely notices can dominate it.", ""]
    for dataset, groups in datasets.items():
        reference = next((g for g, recs in groups.items() if not _is_transformer_family(recs[0]["family"])), None)
        md += [f"### {dataset}", "", "| model | seeds | images | clean | "
               + " | ".join(c[2] for c in ROBUSTNESS_COLUMNS) + " | mCE vs " + (reference or "–") + " |",
               "|---|---:|---:|---:|" + "---:|" * (len(ROBUSTNESS_COLUMNS) + 1)]
        for group, records in groups.items():
            clean = _mean_std([100 * r["clean_accuracy"] for r in records])
            cells = []
            for test, curve, _ in ROBUSTNESS_COLUMNS:
                values = [100 * r["tests"][test]["curves"][curve]["auc"] for r in records
                          if test in r["tests"] and curve in r["tests"][test]["curves"]]
                mean, std = _mean_std(values) if values else (None, 0.0)
                cells.append("–" if mean is None else f"{mean:.1f}" + (f" ± {std:.1f}" if len(values) > 1 else ""))
            mce = "–"
            if reference and all("corruptions" in r["tests"] for r in records + groups[reference]):
                values = [100 * mean_corruption_error(r, ref)["mce"] for r, ref in zip(records, groups[reference])]
                mce = f"{_mean_std(values)[0]:.1f}"
            md.append(f"| {group} | {len(records)} | {records[0]['n']:,} | {clean[0]:.2f} % | " + " | ".join(cells)
                      + f" | {mce} |")
        fig, axes = plt.subplots(1, 5, figsize=(18, 3.6))
        panels = (("occlusion", "random-pixels"), ("shuffle", "shuffle"), ("corruptions", "mean"),
                  ("adversarial", "pgd"), ("translation", "pad"))
        for ax, (test, curve) in zip(axes, panels):
            for i, (group, records) in enumerate(groups.items()):
                usable = [r for r in records if test in r["tests"]]
                if not usable:
                    continue
                levels = usable[0]["tests"][test]["levels"]
                accuracy = [100 * sum(r["tests"][test]["curves"][curve]["accuracy"][k] for r in usable) / len(usable)
                            for k in range(len(levels))]
                ax.plot(levels, accuracy, "-o", markersize=3, color=f"C{i}", label=group)
                ax.set(xlabel=usable[0]["tests"][test]["level"], title=f"{test}: {curve}")
            ax.set_ylabel("accuracy (%)")
            ax.grid(alpha=0.3)
        legend_axis = next((ax for ax in axes if ax.get_legend_handles_labels()[0]), None)
        if legend_axis is not None:
            legend_axis.legend(fontsize=7)
        fig.suptitle(f"{dataset}: accuracy under damage (mean over seeds)")
        fig.tight_layout()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset)
        md += ["", f"![{dataset} robustness]({_save_figure(fig, out, f'figures/{slug}-robustness.png')})", ""]
    return md


def build_report(run_paths: Sequence[str | Path], out: str | Path = "reports", title: str = "vitlab results",
                 robustness: str | Path | None = None) -> Path:
    """Write ``out/REPORT.md`` and ``out/REPORT.html`` from the given run folders (and the ``robustness.json``
    records in ``robustness``, default ``out/robustness``); returns the .md path."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    runs = load_runs(run_paths)
    if not runs:
        raise ValueError("no run folders given")
    for run in runs:  # keep the evidence next to the report
        target = out / "runs" / run["name"]
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.json", "history.csv"):
            if (run["path"] / name).is_file() and (run["path"] / name).resolve() != (target / name).resolve():
                atomic_write(target / name, lambda tmp, source=run["path"] / name: shutil.copy2(source, tmp))

    by_dataset: dict[str, list[dict[str, Any]]] = {}
    self_distillation = _self_distillation_runs(runs)
    dense = [run for run in runs if _is_dense(run)]
    for run in runs:
        if not _is_transfer(run) and run not in self_distillation and run not in dense:
            experiment = run["config"].get("experiment")
            key = run["metrics"]["dataset"] + (f" ({experiment} experiment)" if experiment else "")
            by_dataset.setdefault(key, []).append(run)
    transfer = [run for run in runs if _is_transfer(run)]

    md = [f"# {title}", "",
          f"Generated {_dt.date.today().isoformat()} by `vitlab report` from {len(runs)} run folder(s); "
          "every number below comes from a run's `metrics.json` or `history.csv`, copied to "
          f"`{out.name}/runs/<run>/`.", "",
          "## Methodology", ""]
    devices = sorted({r["metrics"].get("device", "?") for r in runs})
    md += [
        f"- **Hardware:** {', '.join(devices)}; PyTorch "
        f"{', '.join(sorted({r['metrics'].get('torch', torch.__version__) for r in runs}))}, Python "
        f"{', '.join(sorted({r['metrics'].get('python', platform.python_version()) for r in runs}))} (each run's "
        "own are in its `metrics.json`).",
        "- **Data:** the official test split for testing; " + _split_text(runs) + _cifar_note(runs),
        "- **Preprocessing:** pixels scaled to [0, 1] and standardized with the dataset's per-channel mean and "
        "standard deviation; augmentation on whole batches (`digits`: random rotation ±10°, shift ±10 %, zoom "
        "0.9–1.1; `cifar`: pad-4 random crop and horizontal flip; `cifar-strong`: TrivialAugmentWide first).",
        "- **Models:** vitlab's ViT presets (pre-norm encoder, class token, learned positions), DeiT (a ViT with a "
        "distillation token), Swin (shifted-window attention, patch merging; `vitlab.swin`) and torchvision's "
        "ResNet-18 and VGG-11-BN adapted for small images (3×3 stem, no early max-pool; global average pooling "
        "and a linear classifier for VGG), plus a small plain CNN.",
        "- **Training:** one engine for every model (`vitlab.train.fit`), per-run recipe listed below; where a run "
        "has a time budget, its number of epochs was chosen by measuring its step time on this machine "
        "(`--time-budget`), so models get equal wall-clock time, not equal epochs.",
        "",
        "## Results", ""]
    for dataset, group in by_dataset.items():
        rows = []
        for run in group:
            m = run["metrics"]
            epochs_done = _amount_trained(run)
            rows.append({"run": f"{out.name}/runs/{run['name']}", "model": _model_label(run), "family": _family(run),
                         "transformer": _is_transformer(run),
                         "accuracy": 100 * m["test_accuracy"], "n": m["test_n"], "params": m["params"],
                         "mflops": _mflops(run), "train_time_s": m["train_time_s"],
                         "images_per_s": _throughput(run), "epochs_done": epochs_done,
                         "time_budget_s": m.get("time_budget_s"), "machine": machine_class(m)})
        rows.sort(key=lambda r: -r["accuracy"])
        md += [f"### {dataset}", "",
               "| model | family | test accuracy | test images | parameters | MFLOPs / image | training | "
               "train images/s | run |",
               "|---|---|---:|---:|---:|---:|---|---:|---|"]
        for r in rows:
            mflops = f"{r['mflops']:.1f}" if r["mflops"] is not None else "–"
            md.append(f"| {r['model']} | {r['family']} | {r['accuracy']:.2f} % | {r['n']:,} | {r['params']:,} | "
                      f"{mflops} | {r['epochs_done']}, {_fmt_time(r['train_time_s'])} | "
                      f"{r['images_per_s'] or 0:,.0f} | `{r['run']}` |")
        md += _seed_summary(group)
        md += ["", "Recipes and commands:", ""]
        for run in group:
            train_n = _train_n(run)
            size = f"{train_n:,}" if isinstance(train_n, int) else "?"
            noise = run["config"]["dataset"].get("label_noise")
            size += f" ({100 * noise:g} % of them with a wrong label, on purpose)" if noise else ""
            md.append(f"- `{run['name']}`: {_recipe_text(run)}; trained on {size} images. "
                      f"Command: `{run['metrics'].get('command', '?')}`")
        figures = _figures(group, dataset, out)
        md += [""] + [f"![{dataset} {Path(f).stem}]({f})" for f in figures] + [""]
        md += ["**What the numbers say**", ""] + [f"- {line}" for line in _conclusions(dataset, rows, group)] + [""]
    if transfer:
        md += _transfer_section(transfer, out)
    if self_distillation:
        md += _self_distillation_section(self_distillation, out)
    if dense:
        md += _dense_section(dense, out)
    budgeted = _budget_runs(runs)
    if len({r["metrics"]["model"] for r in budgeted}) > 1:
        md += _time_to_accuracy_section(budgeted, out)
    md += _robustness_section(Path(robustness) if robustness is not None else out / "robustness", out)
    md += ["## Reproducing", "",
           "Each command above recreates its run folder (same seed, same machine type: same numbers up to "
           "timing-dependent epoch counts for budgeted runs). Then `vitlab report <run folders> --out reports` "
           "rebuilds this report (`make baselines` reruns the comparison runs; `make report` rebuilds the report "
           "from the copies in `reports/runs/`).", ""]
    text = "\n".join(md)
    atomic_write(out / "REPORT.md", lambda tmp: Path(tmp).write_text(text))
    # escape=True: text from run folders and the title is shown as text, never interpreted as HTML.
    html_body = mistune.create_markdown(escape=True, plugins=["table"])(text)
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;line-height:1.5}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}"
            "code{background:#f4f4f4}</style></head><body>" + html_body + "</body></html>\n")
    atomic_write(out / "REPORT.html", lambda tmp: Path(tmp).write_text(page))
    return out / "REPORT.md"
