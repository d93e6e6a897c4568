"""DINO (vitlab.dino): the teacher gets no gradient, the EMA and center follow their formulas, same-view
pairs are skipped, the k-NN classifier equals a brute-force vote, and a few steps lower the loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.configs import ConfigError
from vitlab.dino import (
    DinoConfig,
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    cosine_schedule,
    ema_update,
    knn_classify,
    linear_probe,
    multi_crop,
    output_entropies,
    random_resized_crop,
)
from vitlab.registry import create_model


def tiny_student() -> MultiCropWrapper:
    backbone = create_model("vit_mnist", num_classes=0, dim=32, depth=2, heads=2)
    return MultiCropWrapper(backbone, DINOHead(32, 64, hidden_dim=32, bottleneck_dim=16))


def uint8_batch(n: int = 8, channels: int = 1, size: int = 28) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


def test_multi_crop_shapes_and_seed() -> None:
    config = DinoConfig(local_crops=3)
    images = uint8_batch()
    torch.manual_seed(1)
    views = multi_crop(images, (33.0,), (78.0,), config, 28, 14)
    assert [tuple(v.shape) for v in views] == [(8, 1, 28, 28)] * 2 + [(8, 1, 14, 14)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    torch.manual_seed(1)
    again = multi_crop(images, (33.0,), (78.0,), config, 28, 14)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.equal(views[0], views[1])  # two different global views
    with pytest.raises(TypeError, match="uint8"):
        multi_crop(images.float(), (0.0,), (1.0,), config, 28, 14)


def test_random_resized_crop_of_the_whole_image_is_the_image() -> None:
    images = torch.rand(4, 3, 16, 16)
    whole = random_resized_crop(images, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(whole, images, atol=1e-5, rtol=0)


def test_a_vit_runs_at_another_size_only_when_asked() -> None:
    """DINO's local crops: ``any_size=True`` resamples the position table; by default another size is an error."""
    backbone = create_model("vit_mnist", num_classes=0).eval()
    images = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(backbone.pool(backbone.forward_features(images, any_size=True)), backbone(images))
    small = torch.randn(3, 1, 14, 14)  # 2x2 patches, interpolated positions
    features = backbone.pool(backbone.forward_features(small, any_size=True))
    assert features.shape == (3, 64)
    # By hand: the class token and the 2x2 patch tokens, plus the 4x4 table resampled to 2x2 (bicubic).
    from vitlab.layers.patches import patchify
    from vitlab.layers.positional import resample_position_table

    tokens = backbone.cls_token(backbone.patch_embed.proj(patchify(small, 7)))
    tokens = tokens + resample_position_table(backbone.pos_embed.table, 2)
    for block in backbone.blocks:
        tokens = block(tokens)
    torch.testing.assert_close(features, backbone.norm(tokens)[:, 0])
    with pytest.raises(ValueError, match="model expects 28x28"):
        backbone(small)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        backbone.forward_features(torch.randn(3, 1, 10, 10), any_size=True)


def test_head_last_layer_is_weight_normalized() -> None:
    head = DINOHead(32, 50, hidden_dim=16, bottleneck_dim=8)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # the scale of the stored weight does not matter
    x = torch.randn(5, 32)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    expected = bottleneck @ F.normalize(head.last_layer.weight, dim=1).T
    torch.testing.assert_close(head(x), expected)
    assert head(x).abs().max() <= 1.0 + 1e-5  # cosines


def test_no_gradient_reaches_the_teacher() -> None:
    student = tiny_student()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    criterion = DINOLoss(64, num_views=4)
    views = [torch.randn(6, 1, 28, 28)] * 2 + [torch.randn(6, 1, 14, 14)] * 2
    teacher_out = teacher(views[:2])
    loss = criterion(student(views), teacher_out, 0.04)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # Even a teacher output that requires grad is cut off inside the loss.
    live = torch.randn(12, 64, requires_grad=True)
    criterion(torch.randn(24, 64, requires_grad=True), live, 0.04).backward()
    assert live.grad is None


def test_loss_skips_same_view_pairs() -> None:
    torch.manual_seed(3)
    views, n, k = 4, 5, 16
    student, teacher = torch.randn(views * n, k), torch.randn(2 * n, k)
    criterion = DINOLoss(k, num_views=views, student_temp=0.1, centering=False)
    q = F.softmax(teacher / 0.05, dim=-1).chunk(2)
    log_p = F.log_softmax(student / 0.1, dim=-1).chunk(views)
    pairs = [(t, v) for t in range(2) for v in range(views) if v != t]
    assert len(pairs) == 2 * (views - 1)
    expected = sum((-q[t] * log_p[v]).sum(-1).mean() for t, v in pairs) / len(pairs)
    torch.testing.assert_close(criterion(student, teacher, 0.05), expected)
    # Changing the student's view 0 changes only the pair (teacher view 1, student view 0): the pair
    # (teacher view 0, student view 0) is not in the loss.
    changed = student.clone()
    changed[:n] = teacher[:n] * 100
    only_pair = ((-q[1] * F.log_softmax(changed[:n] / 0.1, -1)).sum(-1).mean()
                 - (-q[1] * log_p[0]).sum(-1).mean()) / len(pairs)
    torch.testing.assert_close(criterion(changed, teacher, 0.05) - criterion(student, teacher, 0.05), only_pair)
    with pytest.raises(ValueError, match="student views"):
        criterion(student[:-1], teacher, 0.05)


def test_center_update_follows_its_formula() -> None:
    criterion = DINOLoss(8, num_views=2, center_momentum=0.9)
    first, second = torch.randn(10, 8), torch.randn(10, 8)
    criterion.update_center(first)
    torch.testing.assert_close(criterion.center, 0.1 * first.mean(0, keepdim=True))
    criterion.update_center(second)
    torch.testing.assert_close(criterion.center, 0.9 * 0.1 * first.mean(0, keepdim=True)
                               + 0.1 * second.mean(0, keepdim=True))
    # The center is subtracted before sharpening.
    teacher = torch.randn(4, 8)
    torch.testing.assert_close(criterion.teacher_probabilities(teacher, 0.04),
                               F.softmax((teacher - criterion.center) / 0.04, dim=-1))
    off = DINOLoss(8, num_views=2, centering=False)
    off.update_center(first)
    assert torch.count_nonzero(off.center) == 0


def test_ema_update_follows_its_formula() -> None:
    student, teacher = tiny_student(), tiny_student()
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.99)
    for t, old, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.99 * old + 0.01 * s)
    ema_update(teacher, student, 0.0)  # momentum 0: a copy
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_cosine_schedule_endpoints() -> None:
    momentum = cosine_schedule(0.996, 1.0, 100)
    assert momentum[0].item() == pytest.approx(0.996) and momentum[-1].item() == pytest.approx(1.0, abs=1e-5)
    assert torch.all(momentum[1:] >= momentum[:-1])
    lr = cosine_schedule(1e-3, 1e-6, 50, warmup_steps=10)
    assert len(lr) == 50 and lr[9].item() == pytest.approx(1e-3) and lr[0].item() == pytest.approx(1e-4)
    assert lr[-1].item() < 2e-5


def test_output_entropies_detect_both_collapses() -> None:
    k = 32
    one_hot_same = F.one_hot(torch.zeros(10, dtype=torch.long), k).float()  # every image the same dimension
    per_image, of_mean = output_entropies(one_hot_same)
    assert per_image == pytest.approx(0, abs=1e-6) and of_mean == pytest.approx(0, abs=1e-6)
    uniform = torch.full((10, k), 1 / k)
    per_image, of_mean = output_entropies(uniform)
    assert per_image == pytest.approx(math.log(k)) and of_mean == pytest.approx(math.log(k))
    spread = F.one_hot(torch.arange(10) % k, k).float()  # healthy: confident and different
    per_image, of_mean = output_entropies(spread)
    assert per_image == pytest.approx(0, abs=1e-6) and of_mean == pytest.approx(math.log(10))


def test_knn_equals_brute_force_vote() -> None:
    torch.manual_seed(5)
    bank, labels, queries = torch.randn(60, 6), torch.randint(0, 4, (60,)), torch.randn(25, 6)
    k, temperature = 7, 0.1
    predicted = knn_classify(bank, labels, queries, 4, k=k, temperature=temperature, chunk=10)
    for q, p in zip(queries, predicted):
        sims = [(F.cosine_similarity(q, b, dim=0).item(), int(y)) for b, y in zip(bank, labels)]
        votes = [0.0] * 4
        for sim, y in sorted(sims, reverse=True)[:k]:
            votes[y] += math.exp(sim / temperature)
        assert int(p) == max(range(4), key=votes.__getitem__)
    with pytest.raises(ValueError, match="feature sizes"):
        knn_classify(bank, labels, torch.randn(3, 5), 4)


def test_linear_probe_separates_separable_features() -> None:
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 4
    labels = torch.randint(0, 3, (300,))
    features = centers[labels] + torch.randn(300, 8) * 0.3
    accuracy = linear_probe(features[:200], labels[:200], features[200:], labels[200:], 3, epochs=10)
    assert accuracy > 0.95


def test_a_few_steps_lower_the_loss_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    student = tiny_student()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    criterion = DINOLoss(64, num_views=4, centering=True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    views = [torch.randn(16, 1, 28, 28) for _ in range(2)] + [torch.randn(16, 1, 14, 14) for _ in range(2)]
    with torch.no_grad():
        teacher_out = teacher(views[:2])  # a fixed target: the student's loss must fall towards it
    losses = []
    for _ in range(15):
        loss = criterion(student(views), teacher_out, 0.04)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="global_scale"):
        DinoConfig(global_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="momentum_teacher"):
        DinoConfig(momentum_teacher=1.0)
    assert DinoConfig.from_dict(DinoConfig(local_scale=[0.1, 0.3]).to_dict()).local_scale == (0.1, 0.3)


def test_pretrain_then_fine_tune_from_the_run(mnist_available: None, tmp_path) -> None:
    """The CLI writes a run folder whose teacher backbone `vitlab train --init` fine-tunes."""
    from vitlab.cli import main
    from vitlab.runs import Run

    run = tmp_path / "dino"
    assert main(["pretrain", "--model", "vit_mnist", "--model-arg", "depth=2", "--dataset", "mnist", "--subset",
                 "512", "--epochs", "2", "--batch-size", "64", "--max-steps-per-epoch", "3", "--monitor-bank",
                 "256", "--out-dim", "64", "--quiet", "--out", str(run)]) == 0
    history = Run(run).history()
    assert len(history) == 2 and {"teacher_entropy", "knn_accuracy"} <= set(history[0])
    metrics = Run(run).metrics()
    assert 0.0 <= metrics["knn_test_accuracy"] <= 1.0 and metrics["method"] == "dino"
    assert main(["evaluate", str(run)]) == 2  # a feature extractor has nothing to evaluate: a clear error
    teacher = Run(run).model()
    assert teacher.config.num_classes == 0 and teacher.config.depth == 2
    # Resuming a finished run trains nothing more and gives the same teacher.
    assert main(["pretrain", "--model", "vit_mnist", "--model-arg", "depth=2", "--dataset", "mnist", "--subset",
                 "512", "--epochs", "2", "--batch-size", "64", "--max-steps-per-epoch", "3", "--monitor-bank",
                 "256", "--out-dim", "64", "--quiet", "--out", str(run), "--resume"]) == 0
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(),
                                                  Run(run).model().state_dict().values()))
    fine = tmp_path / "fine"
    assert main(["train", "--init", str(run), "--dataset", "mnist", "--subset", "256", "--test-subset", "200",
                 "--epochs", "1", "--batch-size", "64", "--quiet", "--out", str(fine)]) == 0
    tuned = Run(fine).model()
    assert tuned.config.num_classes == 10
    assert Run(fine).config()["init"]["spec"] == str(run)

    from vitlab.report import build_report

    report = build_report([run, fine], tmp_path / "report").read_text()
    assert "DINO pretraining without labels" in report
    assert f"{100 * metrics['knn_test_accuracy']:.2f} %" in report
    assert (tmp_path / "report" / "figures" / "dino-monitors.png").is_file()
