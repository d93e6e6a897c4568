"""Early exits (vitlab.early_exit): threshold 1 reproduces the full model, the simulated sweep equals real
early-exit inference, the self-distillation loss is what it says, and training lowers it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitlab.configs import ConfigError
from vitlab.distill import soft_distillation_loss
from vitlab.early_exit import (
    ExitLoss,
    ExitOutputs,
    ExitViT,
    ExitViTConfig,
    early_exit_predict,
    exit_curve,
    simulate_exits,
)
from vitlab.registry import create_model
from vitlab.train import TrainConfig, train_step


def tiny(**overrides) -> ExitViT:
    config = dict(dim=32, depth=4, heads=2, exit_blocks=(1, 2, 3))
    return create_model("vit_mnist_exits", **{**config, **overrides})


def test_train_mode_returns_every_head_and_eval_mode_the_final_one() -> None:
    model = tiny()
    images = torch.randn(5, 1, 28, 28)
    outputs = model.train()(images)
    assert isinstance(outputs, ExitOutputs) and len(outputs.logits) == 4
    assert all(logits.shape == (5, 10) for logits in outputs.logits)
    model.eval()
    torch.testing.assert_close(model(images), model.forward_exits(images)[-1])
    logits, maps = model(images, return_attention=True)  # explanations still work
    assert maps.shape[0] == 4 and logits.shape == (5, 10)


def test_threshold_one_reproduces_the_full_model() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    with torch.no_grad():  # make the exits very confident: confidence can round to exactly 1.0
        for head in model.exit_heads:
            head.head.weight.mul_(1e4)
    images = torch.randn(64, 1, 28, 28)
    decision = early_exit_predict(model, images, threshold=1.0)
    assert torch.equal(decision.predictions, model(images).argmax(1))
    assert torch.all(decision.blocks == model.config.depth) and torch.all(decision.head == 3)
    first = early_exit_predict(model, images, threshold=0.0)
    assert torch.all(first.blocks == 1) and torch.all(first.head == 0)


def test_simulated_sweep_equals_real_early_exit_inference() -> None:
    torch.manual_seed(1)
    model = tiny().eval()
    images = torch.randn(200, 1, 28, 28)
    with torch.no_grad():
        logits = torch.stack(model.forward_exits(images))
    for threshold in (0.0, 0.105, 0.11, 0.12, 0.5, 1.0):
        real = early_exit_predict(model, images, threshold)
        simulated = simulate_exits(logits, threshold, model.config.head_depths)
        assert torch.equal(real.predictions, simulated.predictions)
        assert torch.equal(real.blocks, simulated.blocks) and torch.equal(real.head, simulated.head)
    with pytest.raises(ValueError, match="threshold"):
        early_exit_predict(model, images, 1.5)


def test_exit_curve_rows() -> None:
    from vitlab.data import ImageTensorDataset

    torch.manual_seed(2)
    model = tiny().eval()
    data = ImageTensorDataset(torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8),
                              torch.randint(0, 10, (40,)), [str(i) for i in range(10)], (33.0,), (78.0,))
    rows = exit_curve(model, data, [0.0, 1.0])
    assert rows[0]["mean_blocks"] == 1 and rows[1]["mean_blocks"] == 4
    assert rows[1]["compute"] == 1.0 and rows[1]["exit_share"] == [0, 0, 0, 1]
    with torch.no_grad():
        full = model(data.normalized()).argmax(1)
    assert rows[1]["accuracy"] == pytest.approx((full == data.labels).float().mean().item())


def test_exit_loss_is_the_depth_weighted_sum() -> None:
    torch.manual_seed(3)
    logits = [torch.randn(6, 10) for _ in range(3)]
    labels = torch.randint(0, 10, (6,))
    loss = ExitLoss([2, 4, 6], kind="self", alpha=0.3, temperature=2.0)
    expected_heads = [0.7 * F.cross_entropy(z, labels) + 0.3 * soft_distillation_loss(z, logits[-1], 2.0)
                      for z in logits[:2]] + [F.cross_entropy(logits[-1], labels)]
    expected = (2 * expected_heads[0] + 4 * expected_heads[1] + 6 * expected_heads[2]) / 12
    torch.testing.assert_close(loss(None, ExitOutputs(logits), labels), expected)
    labels_only = ExitLoss([2, 4, 6], kind="none")
    torch.testing.assert_close(labels_only(None, ExitOutputs(logits), labels),
                               sum(d * F.cross_entropy(z, labels) for d, z in zip([2, 4, 6], logits)) / 12)


def test_the_final_head_gets_no_gradient_from_distillation() -> None:
    final = torch.randn(4, 10, requires_grad=True)
    exit_logits = torch.randn(4, 10, requires_grad=True)
    labels = torch.randint(0, 10, (4,))
    loss = ExitLoss([1, 2], kind="self", alpha=1.0)  # the exit learns only from the final head
    head_losses = loss.head_losses(ExitOutputs([exit_logits, final]), labels)
    head_losses[0].backward()
    assert final.grad is None and exit_logits.grad is not None


def test_a_few_steps_lower_the_loss_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = tiny().train()
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    config = TrainConfig(lr=2e-3, distill="self", distill_alpha=0.5, distill_tau=3.0)
    criterion = ExitLoss(model.config.head_depths, "self", 0.5, 3.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = [train_step(model, images, labels, optimizer, config, criterion=criterion)[0].item()
              for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0]


def test_config_checks_and_distill_flag() -> None:
    with pytest.raises(ConfigError, match="exit_blocks"):
        ExitViTConfig(depth=4, exit_blocks=(2, 4))  # 4 is the final head's place
    with pytest.raises(ConfigError, match="exit_blocks"):
        ExitViTConfig(depth=4, exit_blocks=(3, 1))
    assert ExitViTConfig.from_dict({**ExitViTConfig().to_dict(), "exit_blocks": [1, 3]}).exit_blocks == (1, 3)
    from vitlab.distill import make_criterion

    with pytest.raises(ValueError, match="early exits"):
        make_criterion(create_model("vit_mnist"), TrainConfig(distill="self"))
    assert isinstance(make_criterion(tiny(), TrainConfig(distill="self")), ExitLoss)
    assert make_criterion(tiny(), TrainConfig()).kind == "none"


def test_fine_tuning_resets_every_head() -> None:
    model = tiny()
    model.reset_classifier(3)
    assert model.head.out_features == 3 and all(h.head.out_features == 3 for h in model.exit_heads)
    assert all(torch.count_nonzero(h.head.weight) == 0 for h in model.exit_heads)
    assert model.train()(torch.randn(2, 1, 28, 28)).final.shape == (2, 3)


def test_train_run_with_self_distillation(mnist_available: None, tmp_path) -> None:
    from vitlab.runs import Run, train_run

    run = train_run("vit_mnist_exits", "mnist", tmp_path / "exits", model_args={"depth": 3, "exit_blocks": [1, 2]},
                    recipe={"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 5, "distill": "self"},
                    subset=512, test_subset=200, progress=False, verbose=False, experiment="exits")
    model = Run(run.path).model()
    assert isinstance(model, ExitViT) and model.config.exit_blocks == (1, 2)
    # Resuming compares the saved config (JSON: lists) with a fresh one (tuples): they must be equal.
    train_run("vit_mnist_exits", "mnist", tmp_path / "exits", model_args={"depth": 3, "exit_blocks": [1, 2]},
              recipe={"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 5, "distill": "self"},
              subset=512, test_subset=200, progress=False, verbose=False, resume=True, experiment="exits")
    assert Run(run.path).config()["train"]["distill"] == "self"
    metrics = Run(run.path).metrics()
    curve = metrics["exit_curve"]
    assert [row["threshold"] for row in curve] == sorted(row["threshold"] for row in curve)
    assert curve[-1]["threshold"] == 1.0 and curve[-1]["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert all(row["images_per_s"] > 0 for row in curve if row["threshold"] in (0.9, 1.0))

    from vitlab.report import build_report

    report = build_report([run.path], tmp_path / "report").read_text()
    assert "Early exits: accuracy against compute" in report and "exits" in report
    assert (tmp_path / "report" / "figures" / "early-exits.png").is_file()
