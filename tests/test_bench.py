"""bench/bench.py and tools/gpu_check.py: the site's bench tables (docs/bench.md) are the committed results file's,
the bench compares like with like (timm's twins have the preset's parameters), and the GPU check
reports what it ran (and refuses a machine without a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench import bench
from tools import gpu_check

from vitlab.registry import create_model, model_names

ROOT = Path(__file__).resolve().parent.parent




def test_bench_page_tables_are_generated_from_the_committed_results() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    page = (ROOT / "docs" / "bench.md").read_text()   # the site's Throughput page
    block = page.split(bench.PAGE_BEGIN, 1)[1].split(bench.PAGE_END, 1)[0]
    assert block.strip() == bench.markdown(results).strip(), "run: make bench-page"
    assert (ROOT / "bench" / "results.md").read_text().strip() == bench.markdown(results).strip()
    measured = {row["model"] for row in results["rows"]}
    missing = sorted(set(model_names()) - measured)
    assert not missing and measured == set(model_names()), f"presets missing from the bench: {missing}: rerun make bench"
    assert {row["precision"] for row in results["rows"]} == {"fp32", "bf16"}


def test_paste_into_page_replaces_only_the_text_between_the_markers(tmp_path) -> None:
    page = tmp_path / "bench.md"
    page.write_text(f"# Throughput\n\nbefore\n{bench.PAGE_BEGIN}\nold table\n{bench.PAGE_END}\nafter\n")
    bench.paste_into_page(page, "| new | table |\n")
    assert page.read_text() == f"# Throughput\n\nbefore\n{bench.PAGE_BEGIN}\n| new | table |\n{bench.PAGE_END}\nafter\n"
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no bench markers"):
        bench.paste_into_page(page, "| t |\n")


def test_markdown_reads_ratios_against_timm_fp32_and_marks_the_auto_path() -> None:
    row = {"model": "m", "gflops_per_image": 1.0, "train_windows": 1, "infer_windows": 1}
    results = {"machine": {"cpu": "test CPU", "device": "cpu", "threads": 2, "amx": True, "torch": "x", "date": "d",
                           "auto_precision": "bf16"},
               "peaks": {"fp32": {"gflops": 100.0}, "bf16": {"gflops": 400.0}}, "batch": 64,
               "rows": [{**row, "implementation": "timm", "precision": "fp32", "train_images_per_s": 10.0,
                         "infer_images_per_s": 50.0},
                        {**row, "implementation": "vitlab", "precision": "bf16", "train_images_per_s": 15.0,
                         "infer_images_per_s": 120.0}],
               "compiled": [], "data": {}}
    table = bench.markdown(results)
    # 15 img/s x 3 GFLOP = 45 GFLOP/s = 11 % of the bf16 peak; 1.5x timm fp32 training, 2.4x inference.
    assert "| m | vitlab | bf16 (auto) | 15 | 45.0 (11 %) | 1.50x | 120 | 120.0 (30 %) | 2.40x |" in table
    assert "| m | timm | fp32 | 10 | 30.0 (30 %) | 1.00x |" in table


@pytest.mark.parametrize("name", ["vit_mnist", "vit_cifar", "deit_cifar_small", "swin_cifar"])
def test_timm_twins_have_the_presets_architecture(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    twin = bench.timm_twin(model)
    assert twin is not None
    assert sum(p.numel() for p in twin.parameters()) == sum(p.numel() for p in model.parameters())
    shape = (model.config.in_channels, model.config.image_size, model.config.image_size)
    assert bench.count_flops(twin, shape) == pytest.approx(bench.count_flops(model, shape), rel=0.01)


def test_presets_without_an_exact_twin_are_benched_alone() -> None:
    for name in ("resnet18", "vit_mnist_exits", "segmenter_linear_canvas", "yolos_canvas"):
        assert bench.timm_twin(create_model(name)) is None, name


def test_gpu_check_refuses_a_machine_without_a_gpu(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "check")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "check").exists()


def test_gpu_check_summary_names_the_card_and_every_step(tmp_path) -> None:
    log = tmp_path / "unit-tests.log"
    # What `pytest -q` prints (its closing line has no ===), with a FAILED line in the short summary.
    log.write_text("....F.                                   [ 75%]\n..                                       [100%]\n"
                   "FAILED tests/test_x.py::test_y - AssertionError\n1 failed, 7 passed, 1 skipped in 3.21s\n")
    assert gpu_check.pytest_counts(log) == "1 failed, 7 passed, 1 skipped"
    log.write_text("=========== 2 passed in 0.50s ===========\n")  # pytest without -q
    assert gpu_check.pytest_counts(log) == "2 passed"
    log.write_text("......                                   [ 40%]\n...F")  # killed at the limit: no closing line
    assert gpu_check.pytest_counts(log) == "9 passed, 1 failed before the limit"
    info = {"gpu": "NVIDIA H100", "device": "cuda", "date": "2026-11-27T06:00", "torch": "2.14.1",
            "python": "3.12", "capability": "9.0", "gpu_memory_gib": 79.2, "precision_auto": "bf16 (auto)"}
    records = [{"step": "unit-tests", "status": "passed", "seconds": 80.0, "result": "7 passed"},
               {"step": "notebooks", "status": "timed out after 150 s", "seconds": 150.0, "result": "3 passed"}]
    trained = {"vit_cifar": {"test_accuracy": 0.5123, "epochs": 3, "train_time_s": 59.0, "precision": "bf16",
                             "train_images_per_s": 9000.0, "steps_per_epoch_cap": None,
                             "dataset": "cifar10 (45,000 train images)"}}
    text = gpu_check.summary_markdown(info, records, trained, "| bench |", 540.0, 60.0)
    assert text.startswith("# vitlab GPU check: NVIDIA H100")
    assert "| notebooks | timed out after 150 s | 150 | 3 passed |" in text
    assert "| vit_cifar | cifar10 (45,000 train images) | bf16 | 3 | 59 s | 9,000 | 51.23 % |" in text
    assert "## Bench" in text and "9.0 minutes" in text
