"""Segmentation and detection (lesson 16): the MNIST canvases, Segmenter, YOLOS, matching, metrics, runs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from vitlab import canvas as canvas_module
from vitlab.canvas import CanvasConfig, canvas_batches, load_canvas, make_canvases
from vitlab.checkpoint import shipped_run
from vitlab.configs import ConfigError
from vitlab.dense import dense_run, evaluate_dense, init_encoder
from vitlab.detection import (
    YOLOS,
    DetectionMetrics,
    DetectionOutput,
    SetCriterion,
    average_precision,
    hungarian_match,
    postprocess,
    targets_from_canvas,
)
from vitlab.model import ViT, ViTConfig
from vitlab.runs import Run, RunError
from vitlab.runtime import pick_device
from vitlab.segmentation import SegmentationMetrics, Segmenter, segmentation_loss

TINY = dict(canvas_size=28, min_digit_size=8, max_digit_size=14, train_size=96, val_size=16, test_size=16)
TINY_MODEL = dict(image_size=28, patch_size=7, dim=32, depth=2, heads=2)


def fake_digits(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blobs standing in for MNIST digits: a bright random rectangle on black, 28 x 28."""
    g = torch.Generator().manual_seed(seed)
    digits = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for i in range(n):
        y, x = torch.randint(2, 10, (2,), generator=g).tolist()
        h, w = torch.randint(10, 16, (2,), generator=g).tolist()
        digits[i, y:y + h, x:x + w] = 255
    return digits, torch.arange(n) % 10


# ----------------------------------------------------------------------------- the canvases

def test_canvases_are_deterministic_for_a_seed_and_differ_across_seeds():
    digits, labels = fake_digits()
    config = CanvasConfig(**TINY)
    first = make_canvases(digits, labels, 20, config, seed=3)
    again = make_canvases(digits, labels, 20, config, seed=3)
    other = make_canvases(digits, labels, 20, config, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_masks_agree_with_boxes():
    digits, labels = fake_digits()
    config = CanvasConfig(canvas_size=56, max_digits=4, max_overlap=0.3)
    images, masks, boxes, box_labels = make_canvases(digits, labels, 40, config, seed=0)
    counts = (box_labels >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    for i in range(len(images)):
        inside_any = torch.zeros(56, 56, dtype=torch.bool)
        for box, label in zip(boxes[i], box_labels[i]):
            if label < 0:
                continue
            x1, y1, x2, y2 = box.long().tolist()
            assert 0 <= x1 < x2 <= 56 and 0 <= y1 < y2 <= 56
            region = masks[i, y1:y2, x1:x2]
            assert (region == label + 1).any(), "every box holds visible pixels of its digit"
            inside = torch.zeros(56, 56, dtype=torch.bool)
            inside[y1:y2, x1:x2] = True
            inside_any |= inside & (masks[i] == label + 1)
        assert torch.equal(inside_any, masks[i] > 0), "every mask pixel lies in a box of its digit"
        assert (masks[i][images[i, 0] >= config.ink_threshold] > 0).all(), "all ink is in the mask"
    # Without dilation the mask is exactly the ink; with it, the ink grown by that many pixels.
    bare = make_canvases(digits, labels, 10, CanvasConfig(canvas_size=56, mask_dilation=0), seed=0)
    assert torch.equal(bare[0][:, 0] >= 128, bare[1] > 0)
    one = make_canvases(digits, labels, 1, CanvasConfig(canvas_size=56, max_digits=1, mask_dilation=2), seed=0)
    grown = torch.nn.functional.max_pool2d((one[0] >= 128).float(), 5, stride=1, padding=2)[:, 0] > 0
    assert torch.equal(grown, one[1] > 0)


def test_canvas_config_rejects_nonsense():
    with pytest.raises(ConfigError, match="min_digits"):
        CanvasConfig(min_digits=3, max_digits=2)
    with pytest.raises(ConfigError, match="max_digit_size"):
        CanvasConfig(max_digit_size=80)


def test_splits_come_from_their_own_mnist_digits_and_are_cached(mnist_available, monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path))
    asked = []
    real = canvas_module.load_dataset
    monkeypatch.setattr(canvas_module, "load_dataset", lambda name, split, **kw: asked.append(split) or
                        real(name, split, **kw))
    config = CanvasConfig(**TINY)
    test = load_canvas("test", config)
    assert asked == ["test"] and "MNIST test digits" in test.source and len(test) == 16
    load_canvas("val", config)
    assert asked == ["test", "val"]
    cached = load_canvas("test", config)  # read back, not rebuilt
    assert asked == ["test", "val"] and cached.source.startswith("cache")
    assert torch.equal(cached.images, test.images) and torch.equal(cached.boxes, test.boxes)
    images, masks, boxes, labels = next(canvas_batches(test, 8, shuffle=True, seed=1))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32 and masks.dtype == torch.int64


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_segmenter_decoders_give_per_pixel_logits(decoder):
    model = Segmenter(**TINY_MODEL, num_classes=11, decoder=decoder, decoder_heads=2)
    logits = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 11, 28, 28)
    coarse = model.decoder(model.patch_tokens(torch.randn(3, 1, 28, 28)), model.grid)
    assert coarse.shape == (3, 11, 4, 4)
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}


def test_yolos_outputs_one_class_and_box_per_detection_token():
    model = YOLOS(**TINY_MODEL, num_classes=10, num_det_tokens=6)
    out = model(torch.randn(2, 1, 28, 28))
    assert isinstance(out, DetectionOutput)
    assert out.logits.shape == (2, 6, 11) and out.boxes.shape == (2, 6, 4)
    assert out.boxes.min() >= 0 and out.boxes.max() <= 1
    assert {"det_tokens", "det_pos"} <= model.no_weight_decay()


# ----------------------------------------------------------------------------- matching

def cost_matrix(logits, boxes, target, weights=(1.0, 5.0, 2.0)):
    from torchvision.ops import box_convert, generalized_box_iou
    probs = logits.softmax(-1)
    return (-weights[0] * probs[:, target["labels"]] + weights[1] * torch.cdist(boxes, target["boxes"], p=1)
            - weights[2] * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"),
                                               box_convert(target["boxes"], "cxcywh", "xyxy")))


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_matching_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, m = 5, 3
    logits, boxes = torch.randn(1, q, 11, generator=g), 0.2 + 0.6 * torch.rand(1, q, 4, generator=g)
    target = {"labels": torch.randint(0, 10, (m,), generator=g), "boxes": 0.2 + 0.6 * torch.rand(m, 4, generator=g)}
    boxes[..., 2:] *= 0.5
    target["boxes"][:, 2:] *= 0.5
    rows, cols = hungarian_match(DetectionOutput(logits, boxes), [target])[0]
    cost = cost_matrix(logits[0], boxes[0], target)
    best = min(sum(cost[p[j], j].item() for j in range(m)) for p in itertools.permutations(range(q), m))
    assert len(set(rows.tolist())) == m and sorted(cols.tolist()) == list(range(m))
    assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


def test_set_criterion_handles_empty_images_and_more_objects_than_tokens():
    criterion = SetCriterion(num_classes=10)
    output = DetectionOutput(torch.randn(2, 2, 11, requires_grad=True), torch.rand(2, 2, 4) * 0.5 + 0.25)
    boxes = torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1]])
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([1, 2, 3]), "boxes": boxes}]           # 3 objects, 2 tokens
    loss, parts = criterion(output, targets)
    loss.backward()
    assert torch.isfinite(loss) and output.logits.grad is not None
    rows, cols = hungarian_match(output, targets)[1]
    assert len(rows) == 2 and len(set(cols.tolist())) == 2                       # each token takes one object
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    _, parts = criterion(output, empty)
    assert parts["loss_bbox"] == 0 and parts["loss_giou"] == 0 and parts["loss_class"] > 0


def test_set_criterion_counts_unmatched_tokens_as_no_object():
    criterion = SetCriterion(num_classes=10, eos_coef=0.1)
    target = [{"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    logits = torch.full((1, 4, 11), -10.0)
    logits[0, :, 10] = 10.0            # every token says "no object"...
    logits[0, 2, 3], logits[0, 2, 10] = 10.0, -10.0  # ...but token 2 says "3"
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    loss, parts = criterion(DetectionOutput(logits, boxes), target)
    assert parts["loss_bbox"] == pytest.approx(0, abs=1e-6) and parts["loss_giou"] == pytest.approx(0, abs=1e-6)
    assert parts["loss_class"] < 1e-6 and loss.item() < 1e-5
    logits[0, 2, 3], logits[0, 2, 10] = -10.0, 10.0  # now nobody claims the digit: the class loss is large
    _, parts = criterion(DetectionOutput(logits, boxes), target)
    assert parts["loss_class"] > 1


# ----------------------------------------------------------------------------- metrics

def test_segmentation_metrics_equal_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 5, (4, 16, 16), generator=g)
    predictions = torch.where(torch.rand(4, 16, 16, generator=g) < 0.7, masks, torch.randint(0, 5, (4, 16, 16)))
    predictions[predictions == 4] = 3  # class 4 is never predicted: IoU 0, still counted
    metrics = SegmentationMetrics(6)    # class 5 appears nowhere: no IoU, left out of the mean
    metrics.update(predictions[:2], masks[:2])
    metrics.update(predictions[2:], masks[2:])
    result = metrics.compute()
    p, t = predictions.numpy().ravel(), masks.numpy().ravel()
    hand = [np.sum((p == c) & (t == c)) / np.sum((p == c) | (t == c)) for c in range(5)]
    assert result["per_class_iou"][:5] == pytest.approx(hand)
    assert np.isnan(result["per_class_iou"][5]) and result["per_class_iou"][4] == 0
    assert result["miou"] == pytest.approx(np.mean(hand))
    assert result["miou_objects"] == pytest.approx(np.mean(hand[1:]))
    assert result["pixel_accuracy"] == pytest.approx(np.mean(p == t))


def test_average_precision_on_a_hand_made_case():
    # One image, two objects of class 0; three predictions: a hit (0.9), a miss (0.8), a hit (0.7).
    # Precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; made non-increasing: 1, 2/3, 2/3. The 101 recall
    # points 0..0.50 read 1 and 0.51..1 read 2/3: AP = (51 + 50 * 2/3) / 101.
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 0])}]
    predictions = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [40, 40, 50, 50], [21, 21, 30, 30]]),
                    "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 0, 0])}]
    expected = (51 + 50 * 2 / 3) / 101
    assert average_precision(predictions, targets, 0, 0.5) == pytest.approx(expected)
    assert average_precision(predictions, targets, 0, 0.9) == pytest.approx((51 * 1.0 + 0) / 101)  # 2nd hit's IoU .81
    assert np.isnan(average_precision(predictions, targets, 1, 0.5))
    metrics = DetectionMetrics(2)
    metrics.update(predictions, targets)
    assert metrics.compute()["map_50"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_average_precision_equals_torchmetrics_on_random_detections(seed):
    g = torch.Generator().manual_seed(seed)
    predictions, targets = [], []
    for _ in range(6):
        m = int(torch.randint(1, 4, (), generator=g))
        xy = torch.rand(m, 2, generator=g) * 40
        gt = torch.cat([xy, xy + 5 + torch.rand(m, 2, generator=g) * 10], 1)
        targets.append({"boxes": gt, "labels": torch.randint(0, 3, (m,), generator=g)})
        jitter = gt + torch.randn(m, 4, generator=g) * 2   # near each object, some good enough, some not
        extra = torch.cat([xy + 20, xy + 30], 1)           # false positives
        boxes = torch.cat([jitter, extra])
        predictions.append({"boxes": boxes, "scores": torch.rand(len(boxes), generator=g),
                            "labels": torch.randint(0, 3, (len(boxes),), generator=g)})
    metrics = DetectionMetrics(3)
    metrics.update(predictions, targets)
    result = metrics.compute()
    for threshold, key in ((0.5, "map_50"), (0.75, "map_75")):
        hand = [average_precision(predictions, targets, c, threshold) for c in range(3)]
        assert np.nanmean(hand) == pytest.approx(result[key], abs=1e-6)
    coco = np.nanmean([[average_precision(predictions, targets, c, t) for c in range(3)]
                       for t in np.linspace(0.5, 0.95, 10)])
    assert coco == pytest.approx(result["map"], abs=1e-6)


def test_postprocess_gives_pixel_boxes_and_drops_no_object():
    logits = torch.zeros(1, 2, 3)
    logits[0, 0, 1], logits[0, 1, 2] = 5.0, 5.0  # token 0: class 1; token 1: no object (index 2)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.25], [0.5, 0.5, 0.1, 0.1]]])
    found = postprocess(DetectionOutput(logits, boxes), 40, score_threshold=0.5)[0]
    assert found["labels"].tolist() == [1]
    assert found["boxes"].tolist() == [[10.0, 15.0, 30.0, 25.0]]
    assert box_iou(found["boxes"], found["boxes"]).item() == pytest.approx(1)


def test_the_task_is_read_through_compile_and_ddp_wrappers():
    """``--compile`` wraps the model (``OptimizedModule``; compiled lazily, so this costs nothing): the
    dense loss must still see a segmenter or a detector, not a classifier."""
    from vitlab.dense import task_of

    segmenter, detector = Segmenter(**TINY_MODEL, decoder="linear"), YOLOS(**TINY_MODEL, num_det_tokens=6)
    assert task_of(torch.compile(segmenter)) == "segment" and task_of(torch.compile(detector)) == "detect"
    assert task_of(torch.compile(ViT(ViTConfig(**TINY_MODEL, in_channels=1)))) == "classify"


# ----------------------------------------------------------------------------- learning and runs

@pytest.mark.parametrize("kind", ["linear", "mask", "yolos"])
def test_a_few_steps_lower_each_loss_on_a_tiny_batch(kind):
    torch.manual_seed(0)
    digits, labels = fake_digits()
    config = CanvasConfig(**TINY)
    images, masks, boxes, box_labels = make_canvases(digits, labels, 8, config, seed=0)
    x = (images.float() / 255 - 0.13) / 0.31
    if kind == "yolos":
        model = YOLOS(**TINY_MODEL, num_det_tokens=6)
        criterion = SetCriterion(10)
        targets = targets_from_canvas(boxes, box_labels, 28)
        loss_of = lambda: criterion(model(x), targets)[0]
    else:
        model = Segmenter(**TINY_MODEL, decoder=kind, decoder_heads=2)
        loss_of = lambda: segmentation_loss(model(x), masks.long())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = loss_of().item()
    for _ in range(25):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_of().item() < 0.8 * first


def test_dense_runs_train_resume_evaluate_and_start_from_a_classifier(mnist_available, tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    canvas = CanvasConfig(train_size=128, val_size=16, test_size=16)
    recipe = {"epochs": 2, "batch_size": 32, "eval_batch_size": 16}
    out = tmp_path / "seg"
    run = dense_run("segment", "segmenter_linear_canvas", out, recipe={**recipe, "epochs": 1}, canvas=canvas,
                    progress=False, verbose=False)
    with pytest.raises(RunError, match="--resume"):
        dense_run("segment", "segmenter_linear_canvas", out, recipe=recipe, canvas=canvas, progress=False)
    with pytest.raises(RunError, match="differ"):  # a longer run is another run
        dense_run("segment", "segmenter_linear_canvas", out, recipe=recipe, canvas=canvas, progress=False,
                  resume=True)
    metrics = run.metrics()
    assert metrics["task"] == "segment" and 0 <= metrics["test_miou"] <= 1 and len(metrics["per_class_iou"]) == 11
    assert (out / "predictions.png").stat().st_size > 1000 and len(run.history()) == 1
    again = evaluate_dense(run.model(map_location=pick_device()), load_canvas("test", canvas), 8,
                           precision=run.evaluation_precision())  # like with like: its device and precision
    assert again["miou"] == pytest.approx(metrics["test_miou"])
    # Detection from the shipped MNIST classifier: its blocks are copied, its position table resampled.
    vit = Run(shipped_run("vit_mnist")).model()
    det = dense_run("detect", None, tmp_path / "det", recipe=recipe, canvas=canvas, init=shipped_run("vit_mnist"),
                    progress=False, verbose=False)
    start = init_encoder(shipped_run("vit_mnist"), 56)
    assert torch.equal(start.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    assert start.pos_embed.table.shape == (1, 65, 64)
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert config["task"] == "detect" and config["model"]["name"] == "yolos_canvas" and "init" in config
    assert {"test_map", "test_map_50", "per_class_ap"} <= set(det.metrics())
    assert [row["epoch"] for row in det.history()] == [1, 2]
    # The report gives both runs their own section, with the recorded numbers and a figure.
    from vitlab.report import build_report

    text = build_report([out, tmp_path / "det"], tmp_path / "report").read_text()
    section = text[text.index("### Segmentation and detection"):]
    assert f"{100 * metrics['test_miou']:.2f} %" in section and f"{100 * det.metrics()['test_map']:.2f} %" in section
    assert (tmp_path / "report" / "figures" / "dense.png").is_file() and "(figures/dense.png)" in section


def test_an_interrupted_dense_run_resumes_to_the_same_weights(mnist_available, tmp_path, monkeypatch):
    import vitlab.dense as dense

    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    canvas = CanvasConfig(train_size=96, val_size=8, test_size=8)
    args = dict(recipe={"epochs": 2, "batch_size": 32}, canvas=canvas, progress=False, verbose=False)
    real_evaluate, calls = dense.evaluate_dense, []

    def interrupt_in_epoch_two(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's validation: epoch 1 is saved, epoch 2 is lost
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(dense, "evaluate_dense", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):  # the first run builds the canvases; its resume reads the cache
        dense_run("detect", None, tmp_path / "cut", **args)
    assert len(Run(tmp_path / "cut").history()) == 1
    monkeypatch.setattr(dense, "evaluate_dense", real_evaluate)
    resumed = dense_run("detect", None, tmp_path / "cut", resume=True, **args)
    straight = dense_run("detect", None, tmp_path / "straight", **args)
    for a, b in zip(straight.model().state_dict().values(), resumed.model().state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.metrics()["test_map"] == straight.metrics()["test_map"]


def test_dense_runs_refuse_what_they_cannot_use(tmp_path):
    # Refused before any data is loaded: no dataset needed.
    with pytest.raises(ValueError, match="not a detect model"):
        dense_run("detect", "segmenter_linear_canvas", tmp_path / "x", canvas=CanvasConfig(**TINY))
    with pytest.raises(ValueError, match="--augment: classification-only"):
        dense_run("segment", None, tmp_path / "x", recipe={"augment": "digits"})
    with pytest.raises(ValueError, match="--ema-decay: classification-only"):
        dense_run("detect", None, tmp_path / "x", recipe={"ema_decay": 0.999})
    with pytest.raises(ValueError, match="unknown task"):
        dense_run("classify", None, tmp_path / "x")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_dense_models_must_fit_the_canvases(mnist_available, tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    canvas = CanvasConfig(**TINY)
    with pytest.raises(ValueError, match="11 segment classes"):
        dense_run("segment", None, tmp_path / "x", canvas=canvas, model_args={"num_classes": 5, **TINY_MODEL})
    with pytest.raises(ValueError, match="detection tokens cannot find"):
        dense_run("detect", None, tmp_path / "x", canvas=canvas, model_args={"num_det_tokens": 3, **TINY_MODEL})
    with pytest.raises(ValueError, match="takes 56x56 images"):
        dense_run("detect", None, tmp_path / "x", canvas=canvas, model_args={"image_size": 56})



def test_cli_trains_evaluates_and_refuses(mnist_available, tmp_path, monkeypatch, capsys):
    from vitlab.cli import main

    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "seg"
    small = ["--canvas-arg", "train_size=64", "--canvas-arg", "val_size=8", "--canvas-arg", "test_size=8"]
    assert main(["train", "--task", "segment", *small, "--epochs", "1", "--batch-size", "32", "--out", str(out),
                 "--quiet"]) == 0
    assert "test mIoU" in capsys.readouterr().out and (out / "metrics.json").is_file()
    assert main(["evaluate", str(out), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "val mIoU" in printed and "background" in printed
    assert "val_miou" in json.loads((out / "metrics.json").read_text())
    for args, message in ((["explain", str(out), "--out", str(tmp_path / "m.png")], "predictions.png"),
                          (["train", "--task", "detect", "--model", "segmenter_linear_canvas", "--out",
                            str(tmp_path / "x")], "is a segment model"),
                          (["train", "--task", "detect", "--subset", "60", "--out", str(tmp_path / "x")],
                           "--subset is for classification"),
                          (["train", "--task", "detect", "--dataset", "cifar10", "--out", str(tmp_path / "x")],
                           "mnist-canvas"),
                          (["train", "--task", "segment", "--canvas-arg", "max_digits=0", "--out",
                            str(tmp_path / "x")], "min_digits <= max_digits"),
                          (["train", "--model", "vit_mnist", "--dataset", "mnist-canvas", "--out", str(tmp_path / "x")],
                           "--task segment or --task detect")):
        assert main(args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # A dense run fits a time budget like a classification run: the plan is printed and recorded.
    budget = tmp_path / "budget"
    assert main(["train", "--task", "segment", *small, "--batch-size", "32", "--time-budget", "5", "--out",
                 str(budget), "--quiet"]) == 0
    assert "time budget 5 s:" in capsys.readouterr().out
    config, metrics = (json.loads((budget / f).read_text()) for f in ("config.json", "metrics.json"))
    assert config["time_budget_s"] == 5 and metrics["time_budget_s"] == 5 and metrics["epochs"] == config["train"]["epochs"]
