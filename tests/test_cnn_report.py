import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import _require
from vitlab.checkpoint import load_model, save_json, save_weights
from vitlab.cnn import CNN_ARCHITECTURES, CNNConfig
from vitlab.explain import grad_cam, normalize_maps, upsample
from vitlab.model import create_model
from vitlab.report import build_report
from vitlab.runs import model_spec
from vitlab.train import TrainConfig, plan_for_time_budget


@pytest.mark.parametrize("arch", CNN_ARCHITECTURES)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_cnn_shapes_and_gradients(arch, channels, size):
    model = create_model(arch, in_channels=channels, image_size=size, num_classes=7)
    logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    F.cross_entropy(logits, torch.tensor([0, 6])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cnn_rejects_wrong_channels_and_unknown_arch():
    with pytest.raises(ValueError, match="expects 1-channel images"):
        create_model("resnet18")(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="arch = 'alexnet' is not allowed"):
        CNNConfig(arch="alexnet")


def test_cnn_checkpoint_round_trip(tmp_path):
    model = create_model("simple_cnn").eval()
    save_weights(model, tmp_path / "model.safetensors")
    save_json(tmp_path / "config.json", {"model": model_spec("simple_cnn", model)})
    loaded = load_model(tmp_path)
    images = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded(images), model(images), atol=1e-6)


def test_cnn_grad_cam_matches_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("simple_cnn").eval()
    images = torch.randn(4, 1, 28, 28)
    # pytorch-grad-cam min-max scales the 7x7 map, resizes it, then scales the resized map again.
    ours = normalize_maps(upsample(normalize_maps(grad_cam(model, images, target=torch.tensor([1, 2, 3, 4]))), 28))
    cam = GradCAM(model=model, target_layers=[model.gradcam_layer()])
    theirs = torch.tensor(cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in (1, 2, 3, 4)]))
    assert (ours - theirs).abs().max() < 1e-3


def test_time_budget_planning(halves_dataset):
    train = halves_dataset(256)
    model = create_model("vit_seed", num_classes=2)
    config = TrainConfig(epochs=50, batch_size=32)
    long = plan_for_time_budget(model, train, None, config, budget_s=3600)
    assert long.epochs > 1 and long.max_steps_per_epoch is None
    capped = plan_for_time_budget(model, train, None, config, budget_s=3600, max_epochs=3)
    assert capped.epochs == 3
    short = plan_for_time_budget(model, train, None, config, budget_s=1e-4)
    assert short.epochs == 1 and short.max_steps_per_epoch == 1


def run_cli(*args):
    result = subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    _require("mnist")
    root = tmp_path_factory.mktemp("runs")
    common = ["--dataset", "mnist", "--subset", "256", "--val-size", "200", "--test-subset", "200",
              "--batch-size", "32", "--quiet"]
    run_cli("train", "--model", "resnet18", "--max-steps-per-epoch", "2", "--epochs", "1", "--out",
            str(root / "mnist-resnet18"), *common)
    run_cli("train", "--model", "vit_seed", "--time-budget", "3", "--out", str(root / "mnist-vit_seed"), *common)
    return [root / "mnist-resnet18", root / "mnist-vit_seed"]


def test_cli_trains_a_cnn_and_a_budgeted_vit(tiny_runs):
    resnet = json.loads((tiny_runs[0] / "metrics.json").read_text())
    assert resnet["model"] == "resnet18" and resnet["test_n"] == 200
    assert json.loads((tiny_runs[0] / "config.json").read_text())["model"]["family"] == "cnn"
    assert load_model(tiny_runs[0]).config.arch == "resnet18"
    vit = json.loads((tiny_runs[1] / "metrics.json").read_text())
    assert vit["time_budget_s"] == 3 and vit["epochs"] >= 1


def test_report_numbers_come_from_the_runs(tiny_runs, tmp_path):
    report = build_report(tiny_runs, tmp_path / "reports")
    text = report.read_text()
    for run in tiny_runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert f"{100 * metrics['test_accuracy']:.2f} %" in text
        assert f"{metrics['params']:,}" in text
        assert (tmp_path / "reports" / "runs" / run.name / "metrics.json").read_text() == (run / "metrics.json").read_text()
    assert "## Methodology" in text and "What the numbers say" in text
    assert (tmp_path / "reports" / "REPORT.html").read_text().count("<table>") == 1
    for figure in ("figures/mnist-curves.png", "figures/mnist-per-class.png"):
        assert f"]({figure})" in text and (tmp_path / "reports" / figure).stat().st_size > 5000


@pytest.mark.usefixtures("cifar10_available")
def test_cli_cifar10_tiny_run(tmp_path):
    out = tmp_path / "cifar"
    run_cli("train", "--model", "vit_cifar_small", "--dataset", "cifar10", "--subset", "128", "--val-size", "64",
            "--test-subset", "100", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "32",
            "--augment", "cifar-strong", "--out", str(out), "--quiet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_n"] == 100 and len(metrics["per_class_accuracy"]) == 10
    assert "cat" in metrics["per_class_accuracy"]


def test_the_architecture_diagrams_show_the_shapes_and_the_norm_placement():
    from vitlab.plots import plot_norm_placement, plot_vit_architecture

    fig = plot_vit_architecture(image_size=28, patch_size=7, dim=64, depth=6, num_classes=10)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert {"16 patches of\n7×7 pixels", "16 tokens × 64", "17 × 64", "64", "10 logits", "6 × encoder\nblock"} <= set(texts)
    assert "16 × 64" not in texts, "the class token makes 17 tokens from the first '+' on"
    fig = plot_norm_placement()
    post, pre = ([t.get_text() for t in sorted(ax.texts, key=lambda t: -t.get_position()[1]) if t.get_text()]
                 for ax in fig.axes)                       # top to bottom; arrows are texts without words
    assert post[:4] == ["x", "attention", "+", "LayerNorm"], "post-norm: the norm comes after the sum"
    assert pre[:4] == ["x", "LayerNorm", "attention", "+"], "pre-norm: the norm opens the branch"
