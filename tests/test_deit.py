"""DeiT (vitlab.deit) and knowledge distillation (vitlab.distill): heads, losses by hand, a teacher that
never learns, the timm equivalence, and distillation runs through the engine and the command line."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import require_module
from vitlab import pretrained as P
from vitlab.cli import main
from vitlab.configs import ConfigError
from vitlab.deit import DeiT, DeiTConfig
from vitlab.distill import DistillationLoss, LabelLoss, hard_distillation_loss, make_criterion, soft_distillation_loss
from vitlab.explain import attention_maps, attention_rollout, class_token_attention, explanations
from vitlab.model import ViT, ViTConfig
from vitlab.runs import Run, train_run
from vitlab.train import TrainConfig, make_optimizer, train_step

SMALL = dict(image_size=16, in_channels=3, patch_size=4, dim=32, depth=2, heads=2, num_classes=3)


def test_deit_returns_both_heads_in_training_and_their_average_in_evaluation():
    model = DeiT(DeiTConfig(**SMALL))
    images = torch.randn(5, 3, 16, 16)
    assert model.pos_embed.table.shape == (1, 16 + 2, 32), "one position per patch, class and distillation token"
    model.train()
    class_logits, dist_logits = model(images)
    assert class_logits.shape == dist_logits.shape == (5, 3)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(images)                      # (N, 2 + 16, dim)
        expected = (model.head(features[:, 0]) + model.head_dist(features[:, 1])) / 2
        assert features.shape == (5, 18, 32) and torch.allclose(model(images), expected, atol=1e-6)
        # The two heads read different tokens: they are different functions.
        assert not torch.allclose(model.head(features[:, 0]), model.head_dist(features[:, 1]))
    assert "dist_token" in model.no_weight_decay()
    with pytest.raises(ValueError, match="pool must be 'cls'"):
        DeiTConfig(**{**SMALL, "pool": "mean"})


def test_soft_loss_equals_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    temperature = 2.0

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    p, q = softmax([3.0, 2.0, 1.0]), softmax([1.0, 2.0, 3.0])          # teacher, student
    by_hand = temperature ** 2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert soft_distillation_loss(student, teacher, temperature).item() == pytest.approx(by_hand, rel=1e-6)
    assert soft_distillation_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-7)
    # Averaged over the batch: two copies of the same pair give the same loss.
    assert soft_distillation_loss(student.repeat(2, 1), teacher.repeat(2, 1), temperature).item() == \
        pytest.approx(by_hand, rel=1e-6)


def test_hard_loss_is_cross_entropy_against_the_teachers_decision():
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    teacher = torch.tensor([[0.1, 0.9, 0.0], [0.0, 5.0, 1.0]])          # decisions: class 1, class 1
    by_hand = (-math.log(math.exp(0) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert hard_distillation_loss(student, teacher).item() == pytest.approx(by_hand, rel=1e-6)


def test_the_loss_mixes_labels_and_teacher_with_alpha():
    torch.manual_seed(0)
    teacher = ViT(ViTConfig(**SMALL))
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    class_logits, dist_logits = torch.randn(4, 3), torch.randn(4, 3)
    with torch.no_grad():
        teacher_logits = teacher.eval()(images)
    for kind, term in (("soft", soft_distillation_loss(dist_logits, teacher_logits, 2.0)),
                       ("hard", hard_distillation_loss(dist_logits, teacher_logits))):
        loss = DistillationLoss(teacher, kind, alpha=0.3, temperature=2.0)(images, (class_logits, dist_logits), labels)
        expected = 0.7 * F.cross_entropy(class_logits, labels) + 0.3 * term
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6), kind
    # No teacher: both heads learn from the labels.
    none = DistillationLoss(None)(images, (class_logits, dist_logits), labels)
    expected = (F.cross_entropy(class_logits, labels) + F.cross_entropy(dist_logits, labels)) / 2
    assert none.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="need a teacher"):
        DistillationLoss(None, "hard")


def test_the_teacher_gets_no_gradient_never_changes_and_the_student_learns():
    torch.manual_seed(0)
    teacher = ViT(ViTConfig(**{**SMALL, "dropout": 0.5}))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = DeiT(DeiTConfig(**SMALL))
    criterion = DistillationLoss(teacher, "soft", alpha=0.5, temperature=2.0)
    criterion.train()
    assert not teacher.training, "the teacher stays in eval mode (no dropout) while the loss trains"
    config = TrainConfig(lr=3e-3, weight_decay=0.0, warmup_epochs=0)
    optimizer = make_optimizer(student, config)
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 3, (16,))
    losses = []
    for _ in range(25):
        student.train()
        loss, logits = train_step(student, images, labels, optimizer, config, criterion=criterion)
        losses.append(loss.item())
    assert logits.shape == (16, 3) and losses[-1] < 0.5 * losses[0], losses[::6]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p is q for p in student.parameters() for q in teacher.parameters())


def test_timm_distilled_deit_converts_to_identical_logits():
    timm = require_module("timm")
    reference = timm.models.deit.VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=48, depth=2,
                                                            num_heads=3, num_classes=5).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0.0, 0.2)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(images)
        for converted in (P.from_timm(reference), P.from_timm(reference.state_dict(), heads=3)):
            assert isinstance(converted, DeiT)
            assert (converted(images) - expected).abs().max().item() <= 1e-5
    # Both heads, in training too (timm's distilled_training mode returns the pair).
    reference.set_distilled_training(True)
    reference.train()
    converted = P.from_timm(reference).train()
    torch.manual_seed(3)
    with torch.no_grad():
        theirs, ours = reference(images), converted(images)
    assert all((a - b).abs().max().item() <= 1e-5 for a, b in zip(theirs, ours))


def test_attention_maps_of_both_tokens():
    model = DeiT(DeiTConfig(**SMALL)).eval()
    images = torch.randn(2, 3, 16, 16)
    maps = attention_maps(model, images)
    assert maps.shape == (2, 2, 2, 18, 18)
    for token in (0, 1):
        assert class_token_attention(maps, token=token, num_prefix_tokens=2).shape == (2, 4, 4)
        assert attention_rollout(maps, token=token, num_prefix_tokens=2).shape == (2, 4, 4)
    assert {v.shape for v in explanations(model, images, ["rollout", "attention", "gradcam"]).values()} == \
        {torch.Size([2, 4, 4])}


def test_distillation_is_checked_before_training():
    with pytest.raises(ConfigError, match="needs both a teacher and a kind"):
        TrainConfig(distill="soft")
    with pytest.raises(ConfigError, match="needs both a teacher and a kind"):
        TrainConfig(teacher="runs/x")
    with pytest.raises(ConfigError, match="distill_alpha"):
        TrainConfig(teacher="runs/x", distill="hard", distill_alpha=1.5)
    # A plain ViT without a teacher trains with plain cross-entropy; a DeiT always needs the two-head loss.
    plain = make_criterion(ViT(ViTConfig(**SMALL)), TrainConfig(label_smoothing=0.1))
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert isinstance(plain, LabelLoss) and plain.logits(logits) is logits
    torch.testing.assert_close(plain(None, logits, labels), F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert isinstance(make_criterion(DeiT(DeiTConfig(**SMALL)), TrainConfig()), DistillationLoss)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, folder_dataset):
    root = tmp_path_factory.mktemp("deit")
    data = folder_dataset(root / "images")
    run = train_run("simple_cnn", f"folder:{data}", root / "teacher", model_args={"image_size": 16, "in_channels": 3},
                    seed=0, recipe={"epochs": 2, "batch_size": 8, "precision": "fp32"}, progress=False, verbose=False)
    return run, data


def test_distillation_runs_from_the_command_line(teacher_run, tmp_path, capsys):
    teacher, data = teacher_run
    before = teacher.model().state_dict()
    for kind in ("hard", "soft"):
        code = main(["train", "--model", "deit_cifar_small", "--model-arg", "image_size=16", "--dataset",
                     f"folder:{data}", "--teacher", str(teacher.path), "--distill", kind, "--epochs", "2",
                     "--batch-size", "8", "--out", str(tmp_path / kind), "--quiet"])
        assert code == 0, capsys.readouterr().err
        run = Run(tmp_path / kind)
        assert run.config()["train"]["teacher"] == str(teacher.path) and run.config()["train"]["distill"] == kind
        assert isinstance(run.model(), DeiT) and run.metrics()["test_n"] == 20
    after = teacher.model().state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the teacher's run folder is untouched"
    # A one-head ViT can distil too (Hinton's knowledge distillation through its only head).
    code = main(["train", "--model", "vit_seed", "--model-arg", "image_size=16", "--model-arg", "in_channels=3",
                 "--dataset", f"folder:{data}",
                 "--teacher", str(teacher.path), "--distill", "soft", "--distill-tau", "2", "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "kd"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    # A teacher for other images is refused up front, with both sides named.
    code = main(["train", "--model", "deit_cifar_small", "--model-arg", "image_size=16", "--dataset", f"folder:{data}",
                 "--classes", "left", "--teacher", str(teacher.path), "--distill", "hard", "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "wrong"), "--quiet"])
    assert code == 2 and "predicts 2 classes but the student predicts 1" in capsys.readouterr().err


def test_the_report_gives_an_experiment_its_own_section_with_gains_and_the_teacher(teacher_run, tmp_path):
    """Runs tagged with an experiment are reported together: each model labelled with how it was taught, the
    mean over seeds, each student's gain over the plain ViT, and whether the best beats the teacher."""
    from vitlab.report import build_report

    teacher, data = teacher_run
    common = dict(model_args={"image_size": 16, "in_channels": 3}, progress=False, verbose=False,
                  experiment="distil-test")
    # fp32 everywhere: on a machine where precision auto means bf16 the labels would say "(bf16)".
    runs = [train_run("vit_seed", f"folder:{data}", tmp_path / f"vit-s{seed}", seed=seed,
                      recipe={"epochs": 1, "batch_size": 8, "precision": "fp32"}, **common) for seed in (0, 1)]
    runs.append(train_run("deit_cifar_small", f"folder:{data}", tmp_path / "deit-hard", seed=0,
                          recipe={"epochs": 1, "batch_size": 8, "teacher": str(teacher.path), "distill": "hard",
                                  "precision": "fp32"},
                          **{**common, "model_args": {"image_size": 16}}))
    import shutil

    tagged_teacher = shutil.copytree(teacher.path, tmp_path / teacher.path.name)
    config = Run(tagged_teacher).config()
    Run(tagged_teacher).write_config({**config, "experiment": "distil-test"})
    text = build_report([r.path for r in runs] + [tagged_teacher], tmp_path / "report").read_text()
    assert "(distil-test experiment)" in text and "Mean over seeds" in text
    assert f"deit_cifar_small (hard distillation from {teacher.path.name})" in text
    vit = sum(100 * r.metrics()["test_accuracy"] for r in runs[:2]) / 2
    gain = 100 * runs[2].metrics()["test_accuracy"] - vit
    assert f"Against the plain ViT (vit_seed, {vit:.2f} % on average)" in text and f"{gain:+.2f} points" in text
    assert f"The teacher (simple_cnn, run `{teacher.path.name}`) scored" in text


def test_a_teacher_of_other_classes_or_statistics_is_caught(teacher_run, tmp_path, capsys):
    """Same number of classes is not enough: the teacher's classes must be the student's, in order; a teacher
    standardized with other statistics sees the batch re-standardized to its own."""
    from vitlab.distill import Renormalize

    teacher, data = teacher_run
    code = main(["train", "--model", "deit_cifar_small", "--model-arg", "image_size=16", "--dataset", f"folder:{data}",
                 "--classes", "right,left", "--teacher", str(teacher.path), "--distill", "hard", "--epochs", "1",
                 "--batch-size", "8", "--out", str(tmp_path / "swapped"), "--quiet"])
    assert code == 2 and "trained on the classes ['left', 'right']" in capsys.readouterr().err
    pixels = torch.rand(2, 3, 4, 4)
    student_stats, teacher_stats = ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), ([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    as_student = (pixels - torch.tensor(student_stats[0]).view(1, 3, 1, 1)) / torch.tensor(student_stats[1]).view(1, 3, 1, 1)
    as_teacher = (pixels - torch.tensor(teacher_stats[0]).view(1, 3, 1, 1)) / torch.tensor(teacher_stats[1]).view(1, 3, 1, 1)
    assert torch.allclose(Renormalize(student_stats, teacher_stats)(as_student), as_teacher, atol=1e-6)
