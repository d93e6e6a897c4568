"""The report's time-to-accuracy and robustness sections compute their claims from the runs and records."""

import json
from pathlib import Path

import pytest

from vitlab.analysis.report import (
    PUBLISHED_CIFAR10,
    _conclusions,
    _robustness_section,
    _seed_summary,
    _time_to_accuracy_section,
    machine_class,
    recipe_changes,
)
from vitlab.models.registry import get_model, model_config


def budget_run(model: str, family: str, minutes: float, accuracy: float, augment: str = "cifar",
               device: str = "cpu", precision: str | None = None) -> dict:
    return {"name": f"{model}-{minutes}", "metrics": {"model": model, "time_budget_s": 60 * minutes,
                                                       "test_accuracy": accuracy, "device": device,
                                                       "precision": precision},
            "config": {"model": {"family": family}, "train": {"lr": {"resnet20": 0.1}.get(model, 1e-3),
                                                             "augment": augment}}}


def test_time_to_accuracy_finds_the_first_budget_where_a_transformer_matches_the_cnn(tmp_path: Path) -> None:
    runs = [budget_run("vit_cifar_small", "vit", 5, 0.50), budget_run("resnet20", "cifar_resnet", 5, 0.70),
            budget_run("vit_cifar_small", "vit", 30, 0.80), budget_run("resnet20", "cifar_resnet", 30, 0.79)]
    text = "\n".join(_time_to_accuracy_section(runs, tmp_path))
    assert "first matches the best CNN at 30 min" in text
    assert "5 min: best transformer vit_cifar_small (cifar, fp32) 50.00 %, best CNN resnet20 (cifar, fp32) 70.00 % (-20.00" in text
    assert f"{PUBLISHED_CIFAR10['resnet20'][0]:.2f} %" in text                      # the literature beside ours
    assert (tmp_path / "figures" / "cifar10-time-to-accuracy.png").stat().st_size > 0


def test_time_to_accuracy_says_when_no_budget_crosses(tmp_path: Path) -> None:
    runs = [budget_run("vit_cifar_small", "vit", 5, 0.50), budget_run("resnet20", "cifar_resnet", 5, 0.70),
            budget_run("vit_cifar_small", "vit", 5, 0.54)]                         # two seeds: mean ± std
    text = "\n".join(_time_to_accuracy_section(runs, tmp_path))
    assert "No budget measured here where a transformer matches the best CNN (5 min compared)" in text
    assert "52.00 % ± 2.83 (2)" in text


def test_time_to_accuracy_keeps_each_machine_apart(tmp_path: Path) -> None:
    """A budget buys different numbers of steps on different machines: runs from two CPUs get their own rows and
    their own conclusions, never a transformer of one machine against a CNN of the other."""
    xeon = dict(device="cpu (2 cores, x86_64)", precision="bf16 (auto: CPU with AMX)")
    epyc = dict(device="cpu (2 cores, AMD EPYC, x86_64)", precision="fp32 (auto: CPU without AMX)")
    runs = [budget_run("vit_cifar_small", "vit", 5, 0.60, **xeon), budget_run("resnet20", "cifar_resnet", 5, 0.70, **xeon),
            budget_run("vit_cifar_small", "vit", 5, 0.55, **epyc), budget_run("resnet20", "cifar_resnet", 5, 0.50, **epyc)]
    text = "\n".join(_time_to_accuracy_section(runs, tmp_path))
    assert "| resnet20 (cifar, fp32, AMD EPYC) | 50.00 % |" in text and "| resnet20 (cifar, bf16, Intel CPU with AMX) | 70.00 % |" in text
    assert "- bf16, Intel CPU with AMX: No budget measured here where a transformer matches the best CNN (5 min compared)." in text
    assert "- fp32, AMD EPYC: The best transformer first matches the best CNN at 5 min." in text
    assert machine_class({"precision": "fp32", "device": "cpu (2 cores, x86_64)"}) == "fp32"
    assert machine_class({"precision": "bf16 (autocast)", "device": "cuda (NVIDIA H200)"}) == "bf16, NVIDIA H200"
    assert "+5.00 points" in text and "-10.00 points" in text and "+10.00" not in text   # never across machines


def test_time_to_accuracy_gives_each_searched_recipe_its_own_row(tmp_path: Path) -> None:
    """The CIFAR-10 search varies learning rate, batch size and label smoothing: a run that changed one of them
    from its registered recipe is its own row, never averaged into the registered recipe's seeds."""
    registered = get_model("cct_2_3x2").recipe
    runs = [budget_run("cct_2_3x2", "cct", 5, 0.60), budget_run("cct_2_3x2", "cct", 5, 0.62),
            budget_run("cct_2_3x2", "cct", 5, 0.50), budget_run("cct_2_3x2", "cct", 5, 0.70),
            budget_run("cct_2_3x2", "cct", 5, 0.40)]
    runs[0]["config"]["train"].update(lr=registered["lr"], batch_size=registered["batch_size"],
                                      label_smoothing=registered["label_smoothing"])        # the recipe, spelled out
    runs[2]["config"]["train"]["label_smoothing"] = 0.0
    runs[3]["config"]["train"].update(lr=2e-3, batch_size=256)
    runs[4]["config"]["train"]["lr"] = 2e-3
    assert recipe_changes(runs[0]) == [] and recipe_changes(runs[2]) == ["label smoothing 0"]
    assert recipe_changes(runs[3]) == ["lr 0.002", "batch 256"]
    text = "\n".join(_time_to_accuracy_section(runs, tmp_path))
    assert "| cct_2_3x2 (cifar, fp32) | 61.00 % ± 1.41 (2) |" in text
    assert "| cct_2_3x2 (cifar, label smoothing 0, fp32) | 50.00 % |" in text
    assert "| cct_2_3x2 (cifar, lr 0.002, batch 256, fp32) | 70.00 % |" in text
    assert "| cct_2_3x2 (cifar, lr 0.002, fp32) | 40.00 % |" in text


def test_time_to_accuracy_gives_each_searched_model_size_its_own_row(tmp_path: Path) -> None:
    """The search also varies the ViT's patch size, width and depth (``--model-arg``): a run whose model config
    differs from the preset's is its own row (any other field too, by its name); the preset spelled out is not a
    change."""
    preset = model_config("vit_cifar_small").to_dict()
    runs = [budget_run("vit_cifar_small", "vit", 5, accuracy) for accuracy in (0.50, 0.52, 0.60, 0.40, 0.45)]
    changes = ({"num_classes": 100}, {}, {"depth": 4}, {"patch_size": 8, "dim": 96}, {"drop_path": 0.0})  # the dataset's: none
    for run, change in zip(runs, changes):
        run["config"]["model"]["config"] = preset | change
    assert [recipe_changes(r) for r in runs] == [[], [], ["depth 4"], ["patch 8", "width 96"], ["drop_path 0.0"]]
    text = "\n".join(_time_to_accuracy_section(runs[:4], tmp_path))
    assert "| vit_cifar_small (cifar, fp32) | 51.00 % ± 1.41 (2) |" in text
    assert "| vit_cifar_small (cifar, depth 4, fp32) | 60.00 % |" in text
    assert "| vit_cifar_small (cifar, patch 8, width 96, fp32) | 40.00 % |" in text


def record(dataset: str, family: str, clean: float, pgd: list[float], corruption: list[float]) -> dict:
    curve = lambda acc: {"accuracy": acc, "auc": sum(acc) / len(acc)}  # noqa: E731 - a tiny fixture helper
    return {"dataset": dataset, "family": family, "clean_accuracy": clean, "n": 100,
            "tests": {"adversarial": {"level": "eps", "levels": [0.0, 0.1], "curves": {"pgd": curve(pgd)}},
                      "corruptions": {"level": "severity", "levels": [1, 2],
                                      "curves": {"noise": curve(corruption), "mean": curve(corruption)}}}}


def test_robustness_section_averages_seeds_and_scores_mce_against_the_cnn(tmp_path: Path) -> None:
    folder = tmp_path / "robustness"
    folder.mkdir()
    records = {"mnist-cnn-s0": record("mnist", "cifar_resnet", 0.99, [0.99, 0.20], [0.9, 0.8]),
               "mnist-cnn-s1": record("mnist", "cifar_resnet", 0.99, [0.99, 0.40], [0.9, 0.8]),
               "mnist-vit-s0": record("mnist", "vit", 0.97, [0.97, 0.10], [0.8, 0.6]),
               "mnist-vit-s1": record("mnist", "vit", 0.97, [0.97, 0.10], [0.8, 0.6])}
    for name, content in records.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    lines = _robustness_section(folder, tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| mnist-")}
    assert set(rows) == {"mnist-cnn", "mnist-vit"}
    assert "| 2 | 100 | 99.00 % |" in rows["mnist-cnn"] and "64.5 ± 7.1" in rows["mnist-cnn"]   # PGD AUC over seeds
    assert rows["mnist-cnn"].endswith("| 100.0 |")                         # the reference against itself
    # mCE: the ViT's errors (0.2 + 0.4) over the CNN's (0.1 + 0.2) = 200 %.
    assert rows["mnist-vit"].endswith(f"| {200.0:.1f} |")
    assert (tmp_path / "figures" / "mnist-robustness.png").stat().st_size > 0


def test_robustness_section_is_empty_without_records(tmp_path: Path) -> None:
    assert _robustness_section(tmp_path / "none", tmp_path) == []


@pytest.mark.parametrize("model", sorted(PUBLISHED_CIFAR10))
def test_published_numbers_name_registered_models(model: str) -> None:
    assert f"{PUBLISHED_CIFAR10[model][0]:.2f} % published" in get_model(model).description


def result_row(model: str, family: str, accuracy: float, images_per_s: float, machine: str) -> dict:
    return {"run": f"reports/runs/{model}-{machine}", "model": model, "family": family, "transformer": family == "ViT",
            "accuracy": accuracy, "params": 1000, "train_time_s": 600.0, "images_per_s": images_per_s,
            "epochs_done": "10 epochs", "time_budget_s": 600, "machine": machine}


def test_conclusions_compare_speeds_and_budgets_only_within_one_machine() -> None:
    """A results table may hold runs recorded on two machines: each gets its own speed range, and runs of equal
    budget on different machines are not called a same-machine comparison."""
    rows = [result_row("vit_mnist", "ViT", 99.2, 3000, "bf16, Intel CPU with AMX"),
            result_row("simple_cnn", "CNN", 99.0, 6000, "bf16, Intel CPU with AMX"),
            result_row("cct_2_3x2", "cct", 99.1, 700, "fp32, AMD EPYC")]
    text = "\n".join(_conclusions("mnist", rows, []))
    assert "Training throughput (bf16, Intel CPU with AMX) ranged from 3,000 images/s (vit_mnist) to 6,000" in text
    assert "700 images/s" not in text                        # one run on the EPYC: no range, never against the Xeon
    assert "recorded on 2 machine classes (bf16, Intel CPU with AMX; fp32, AMD EPYC): compare speeds and " \
        "time-budgeted accuracies only within one" in text
    assert "on the same machine" not in text
    # ResNet-20's family (cifar_resnet) is a CNN too: the transformer is compared with it.
    resnet = dict(rows[1], model="resnet20", family="cifar_resnet", accuracy=99.5, images_per_s=None)
    text = "\n".join(_conclusions("mnist", [rows[0], resnet, dict(rows[2], images_per_s=None)], []))
    assert "0.30 percentage points below the best CNN (resnet20, 99.50 %)" in text
    assert "recorded on 2 machine classes" in text          # a machine without a speed still counts
    same = [dict(row, machine="fp32, AMD EPYC") for row in rows]
    text = "\n".join(_conclusions("mnist", same, []))
    assert "Training throughput (fp32, AMD EPYC) ranged from 700 images/s (cct_2_3x2) to 6,000" in text
    assert "on the same machine" in text and "machines (" not in text


def classify_run(model: str, seed: int, accuracy: float, budget_s: float | None = None, **recipe: object) -> dict:
    train = {"lr": 1e-3, "batch_size": 128, "epochs": 10, "seed": seed, **recipe}
    return {"name": f"{model}-{seed}", "config": {"model": {"family": "vit"}, "train": train},
            "metrics": {"model": model, "test_accuracy": accuracy, "time_budget_s": budget_s, "train_n": 100}}


def test_seed_means_pool_only_runs_that_differ_by_their_seed() -> None:
    """Two budgets, or two recipes, of one model are two settings: never averaged as if they were seeds."""
    runs = [classify_run("vit_mnist", 0, 0.90, 300, max_steps_per_epoch=326),
            classify_run("vit_mnist", 1, 0.92, 300, epochs=12, max_steps_per_epoch=None),
            classify_run("vit_mnist", 0, 0.97, 1800),                       # one seed of another budget
            classify_run("vit_mnist", 0, 0.50, None, batch_size=64), classify_run("vit_mnist", 0, 0.60, None)]
    text = "\n".join(_seed_summary(runs))
    rows = [line for line in text.splitlines() if line.startswith("| vit_mnist")]
    # The two 5-minute runs are seeds of one setting (a budget plans its own epochs); nothing else pairs up. The
    # label names what tells the setting apart from the model's others.
    assert rows == ["| vit_mnist (5 min, batch_size 128) | 2 | 91.00 % | 1.41 |"], rows
    assert _seed_summary(runs[2:]) == []                                     # no setting has two seeds
