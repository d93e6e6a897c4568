"""vitlab.analysis.robustness and ``vitlab robustness``: every transform's shapes, determinism, identity cases and
the damage that must grow; the ViT's token dropping against the encoder run by hand; FGSM and PGD against
torchattacks; the metric arithmetic on hand cases; the command's errors and its robustness.json.

Fast: tiny synthetic models and images, or a few dozen MNIST test images with the shipped weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vitlab
from conftest import require_module
from vitlab.analysis import robustness as R
from vitlab.analysis.explain import attention_maps, attention_rollout
from vitlab.cli import main
from vitlab.models.cnn import CNNClassifier, CNNConfig
from vitlab.models.deit import DeiT, DeiTConfig
from vitlab.models.early_exit import ExitViT, ExitViTConfig
from vitlab.models.vit import ViT, ViTConfig
from vitlab.runfolder import Run

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"


def tiny_vit(**overrides) -> ViT:
    config = dict(image_size=16, in_channels=3, patch_size=4, num_classes=3, dim=16, depth=2, heads=2)
    return ViT(ViTConfig(**{**config, **overrides})).eval()


def pixels(n: int = 4, channels: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random images on the 8-bit grid, pixel scale [0, 1]: ``(n, C, size, size)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator).float() / 255


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- the ViT on a subset of its tokens


def _encoder_by_hand(vit: ViT, tokens: torch.Tensor) -> torch.Tensor:
    for block in vit.blocks:
        tokens = block(tokens)
    return vit.forward_head(vit.norm(tokens))


@pytest.mark.parametrize("make", [
    lambda: tiny_vit(),
    lambda: tiny_vit(pool="mean"),
    lambda: DeiT(DeiTConfig(image_size=16, in_channels=3, patch_size=4, num_classes=3, dim=16, depth=2, heads=2)),
    lambda: ExitViT(ExitViTConfig(image_size=16, in_channels=3, patch_size=4, num_classes=3, dim=16, depth=3,
                                  heads=2, exit_blocks=(1,))),
], ids=["vit", "vit-mean-pool", "deit", "exit-vit"])
def test_token_dropping_equals_the_encoder_run_by_hand_on_the_kept_tokens(make) -> None:
    vit = make().eval()
    images = torch.randn(3, 3, 16, 16)
    keep = torch.tensor([[0, 5, 9], [1, 2, 15], [3, 7, 8]])                      # 3 of the 16 patches, per image
    with torch.no_grad():
        tokens = vit.tokens(images)                                                  # (3, prefix + 16, dim)
        prefix = vit.num_prefix_tokens
        by_hand = torch.stack([torch.cat([tokens[i, :prefix], tokens[i, prefix + keep[i]]]) for i in range(3)])
        expected = _encoder_by_hand(vit, by_hand)
        dropped = R.drop_tokens_logits(vit, images, keep)
        thinned = vit.keep_patch_tokens(tokens, keep)
    assert thinned.shape == (3, prefix + 3, 16)
    assert torch.equal(thinned, by_hand)
    assert torch.allclose(dropped, expected, atol=1e-6)
    assert dropped.shape == (3, 3)


def test_forward_tokens_of_all_tokens_is_forward_and_forward_is_untouched() -> None:
    vit = tiny_vit()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        full = vit(images)
        everything = R.drop_tokens_logits(vit, images, torch.arange(16))         # (K,): the same for every image
        by_hand = vit.forward_head(vit.forward_features(images))
    assert torch.equal(full, everything)
    assert torch.equal(full, by_hand)


def test_keep_patch_tokens_refuses_bad_indices() -> None:
    vit = tiny_vit()
    tokens = vit.tokens(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="outside"):
        vit.keep_patch_tokens(tokens, torch.tensor([[0, 16], [1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        vit.keep_patch_tokens(tokens, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="rows"):
        vit.keep_patch_tokens(tokens, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a ViT"):
        R.drop_tokens_logits(CNNClassifier(CNNConfig(arch="simple_cnn", image_size=16, in_channels=3, num_classes=3)),
                             torch.randn(1, 3, 16, 16), torch.arange(3))


def test_the_flat_name_is_the_module() -> None:
    import vitlab.robustness as flat

    assert flat is R
    assert vitlab.FLAT_NAMES["robustness"] == ("analysis.robustness",)


# --------------------------------------------------------------------------- occlusion


def test_random_order_is_seeded_and_occlusion_sets_are_nested() -> None:
    order = R.random_patch_order(5, 16, gen(1))
    assert torch.equal(order, R.random_patch_order(5, 16, gen(1)))
    assert not torch.equal(order, R.random_patch_order(5, 16, gen(2)))
    assert torch.equal(order.sort(dim=1).values, torch.arange(16).expand(5, 16))
    previous = torch.zeros(5, 16, dtype=torch.bool)
    for fraction in (0.0, 0.1, 0.3, 0.5, 0.9):
        dropped, keep = R.occlusion_sets(order, fraction)
        assert dropped.sum(dim=1).tolist() == [round(fraction * 16)] * 5
        assert keep.shape == (5, 16 - round(fraction * 16))
        assert not dropped.gather(1, keep).any()                                     # kept and dropped: disjoint
        assert (dropped | ~previous).all()                                           # more damage drops a superset
        previous = dropped
    assert not R.occlusion_sets(order, 0.0)[0].any()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        R.occlusion_sets(order, 1.0)


def test_mask_patches_paints_exactly_the_dropped_patches_with_the_mean() -> None:
    images = pixels(2)
    dropped = torch.zeros(2, 16, dtype=torch.bool)
    dropped[0, 5] = True                                                             # row 1, column 1
    dropped[1, [0, 15]] = True
    masked = R.mask_patches(images, dropped, 4, (0.1, 0.2, 0.3))
    assert masked.shape == images.shape
    fill = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1).expand(3, 4, 4)
    assert torch.equal(masked[0, :, 4:8, 4:8], fill)
    assert torch.equal(masked[1, :, 0:4, 0:4], fill) and torch.equal(masked[1, :, 12:, 12:], fill)
    changed = (masked != images).any(dim=1)
    assert changed[0].sum() <= 16 and not changed[0, :4].any() and not changed[1, 4:12].any()
    with pytest.raises(ValueError, match="divide"):
        R.mask_patches(images, dropped, 5, (0.0,) * 3)


def test_salient_order_follows_the_models_own_map() -> None:
    vit = tiny_vit()
    images = torch.randn(3, 3, 16, 16)
    order = R.salient_patch_order(vit, images, 4)
    rollout = attention_rollout(attention_maps(vit, images)).flatten(1)
    assert torch.equal(order, rollout.argsort(dim=1, descending=True, stable=True))
    scores = rollout.gather(1, order)
    assert (scores[:, :-1] >= scores[:, 1:]).all()                                   # most salient first
    cnn = CNNClassifier(CNNConfig(arch="simple_cnn", image_size=16, in_channels=3, num_classes=3)).eval()
    cnn_order = R.salient_patch_order(cnn, images, 4)                                # Grad-CAM, 4x4 map
    assert torch.equal(cnn_order.sort(dim=1).values, torch.arange(16).expand(3, 16))


# --------------------------------------------------------------------------- shuffling


def test_shuffle_moves_whole_blocks_and_grid_one_is_the_identity() -> None:
    images = pixels(3, size=16)
    assert torch.equal(R.shuffle_patches(images, 1, gen()), images)
    shuffled = R.shuffle_patches(images, 4, gen(3))
    assert shuffled.shape == images.shape
    assert torch.equal(shuffled, R.shuffle_patches(images, 4, gen(3)))
    blocks = lambda x: x.reshape(3, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(3, 16, -1)
    before, after = blocks(images), blocks(shuffled)
    for i in range(3):  # every block of the output is one of the input's, each used once
        matches = (after[i].unsqueeze(1) == before[i].unsqueeze(0)).all(dim=-1)
        assert matches.sum(dim=1).tolist() == [1] * 16 and matches.sum(dim=0).tolist() == [1] * 16
    assert not torch.equal(shuffled, images)
    with pytest.raises(ValueError, match="divide"):
        R.shuffle_patches(images, 3, gen())


# --------------------------------------------------------------------------- corruptions


@pytest.mark.parametrize("name", list(R.CORRUPTIONS))
def test_every_corruption_is_seeded_shaped_and_in_range(name: str) -> None:
    images = pixels(3, size=32)
    for channels in (3, 1):
        x = images[:, :channels]
        out = R.corrupt(x, name, 3, gen(5))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, R.corrupt(x, name, 3, gen(5)))                    # the same seed, the same damage
        assert torch.equal(out * 255, (out * 255).round())                           # on the 8-bit grid
        assert not torch.equal(out, x)
    if name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "elastic"):
        assert not torch.equal(R.corrupt(images, name, 3, gen(5)), R.corrupt(images, name, 3, gen(6)))


def test_the_severity_parameters_are_cifar10_cs() -> None:
    table = R.CORRUPTION_PARAMETERS
    assert set(table) == set(R.CORRUPTIONS) and all(len(v) == 5 for v in table.values())
    assert table["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert table["shot_noise"] == (500, 250, 100, 75, 50)
    assert table["contrast"] == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert table["jpeg"] == (80, 65, 58, 50, 40)
    assert table["elastic"][1] == (0.05, 0.2, 0.07)
    for bad in (0, 6):
        with pytest.raises(ValueError, match="1 to 5"):
            R.corrupt(pixels(), "contrast", bad, gen())
    with pytest.raises(ValueError, match="unknown corruption"):
        R.corrupt(pixels(), "fog", 1, gen())


def test_neutral_parameters_are_the_identity() -> None:
    images = pixels(3, size=32)
    for function, neutral in ((R.gaussian_noise, 0.0), (R.shot_noise, float("inf")), (R.impulse_noise, 0.0),
                              (R.speckle_noise, 0.0), (R.gaussian_blur, 0.0), (R.contrast, 1.0),
                              (R.brightness, 0.0), (R.pixelate, 1.0)):
        assert torch.allclose(function(images, neutral, gen()), images, atol=1e-6), function.__name__
    assert torch.allclose(R.elastic(images, (0.0, 0.0, 0.0), gen()), images, atol=1e-5)
    grey = images[:, :1]  # (colour loses its fine detail to chroma subsampling even at quality 100)
    assert (R.jpeg(grey, 100) - grey).abs().mean() < 1 / 255


def test_the_damage_grows_with_severity() -> None:
    grey = torch.full((8, 3, 32, 32), 0.5)
    noise = [(R.corrupt(grey, "gaussian_noise", s, gen()) - grey).std().item() for s in R.SEVERITIES]
    assert noise == sorted(noise) and noise[0] > 0.03
    images = pixels(8, size=32)
    spread = [R.corrupt(images, "contrast", s, gen()).std().item() for s in R.SEVERITIES]
    assert spread == sorted(spread, reverse=True)
    light = [R.corrupt(images, "brightness", s, gen()).mean().item() for s in R.SEVERITIES]
    assert light == sorted(light) and light[0] > images.mean()
    variation = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean().item()
    blur = [variation(R.corrupt(images, "gaussian_blur", s, gen(), quantize=False)) for s in R.SEVERITIES]
    assert blur == sorted(blur, reverse=True) and blur[0] < variation(images)
    blocks = [variation(R.corrupt(images, "pixelate", s, gen(), quantize=False)) for s in R.SEVERITIES]
    assert blocks[-1] < blocks[0] < variation(images)


def test_blur_and_brightness_equal_scikit_image_as_cifar10_c_computes_them() -> None:
    gaussian = require_module("skimage.filters").gaussian                          # the pretrained extra
    rgb2hsv, hsv2rgb = require_module("skimage.color").rgb2hsv, require_module("skimage.color").hsv2rgb
    images = pixels(3, size=32).double()
    hwc = images.permute(0, 2, 3, 1).numpy()
    for sigma in (0.4, 1.0):
        ours = R.gaussian_blur(images, sigma).permute(0, 2, 3, 1).numpy()
        reference = np.stack([gaussian(im, sigma=sigma, channel_axis=-1) for im in hwc])
        assert np.abs(ours - reference).max() < 1e-6
    for shift in (0.1, 0.3):
        hsv = [rgb2hsv(im) for im in hwc]
        for h in hsv:
            h[..., 2] = np.clip(h[..., 2] + shift, 0, 1)
        reference = np.stack([hsv2rgb(h) for h in hsv])
        ours = R.brightness(images, shift).permute(0, 2, 3, 1).numpy()
        assert np.abs(ours - reference).max() < 1e-6


def test_box_resize_equals_pils_box_filter() -> None:
    images = pixels(2, size=32)
    for side in (30, 27, 20):
        small = R.box_resize(images, (side, side))
        reference = np.stack([[np.asarray(Image.fromarray(ch.numpy()).resize((side, side), Image.BOX))
                               for ch in im] for im in images])
        assert np.abs(small.numpy() - reference).max() < 1e-6
        back = R.box_resize(small, (32, 32))
        reference_back = np.stack([[np.asarray(Image.fromarray(ch).resize((32, 32), Image.BOX))
                                    for ch in im] for im in reference])
        assert np.abs(back.numpy() - reference_back).max() < 1e-6


# --------------------------------------------------------------------------- adversarial


def _pixel_vit(seed: int = 0) -> R.PixelModel:
    torch.manual_seed(seed)
    return R.PixelModel(tiny_vit(), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()


def test_hand_fgsm_equals_torchattacks_fgsm() -> None:
    torchattacks = require_module("torchattacks")
    model = _pixel_vit()
    images, labels = pixels(8), torch.arange(8) % 3
    for eps in (1 / 255, 8 / 255, 0.1):
        ours = R.fgsm(model, images, labels, eps)
        theirs = torchattacks.FGSM(model, eps=eps)(images, labels)
        assert (ours - theirs).abs().max() <= 1e-6
        assert (ours - images).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_pgd_stays_in_the_ball_and_equals_torchattacks_pgd() -> None:
    torchattacks = require_module("torchattacks")
    model = _pixel_vit()
    images, labels = pixels(8), torch.arange(8) % 3
    eps, steps, alpha = 4 / 255, 5, 1 / 255
    ours = R.pgd(model, images, labels, eps, steps, alpha)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(images, labels)
    assert (ours - theirs).abs().max() <= 1e-6
    # A seeded random start draws what torchattacks draws from the global generator seeded alike.
    ours = R.pgd(model, images, labels, eps, steps, alpha, random_start=True, generator=gen(7))
    torch.manual_seed(7)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(images, labels)
    assert (ours - theirs).abs().max() <= 1e-6
    assert (ours - images).abs().max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(images), labels)
        attacked_loss = F.cross_entropy(model(R.pgd(model, images, labels, 0.1, 5)), labels)
    assert attacked_loss > clean_loss                                                # the attack raises the loss
    assert torch.equal(R.pgd(model, images, labels, 0.0, 3), images)                # eps 0: nothing moves


# --------------------------------------------------------------------------- translation


def test_translation_wraps_like_roll_and_pads_with_the_fill() -> None:
    images = pixels(3)
    assert torch.equal(R.translate(images, (0, 0)), images)
    assert torch.equal(R.translate(images, (2, -3), "wrap"), torch.roll(images, (2, -3), (2, 3)))
    per_image = torch.tensor([[1, 0], [0, -2], [-3, 3]])
    moved = R.translate(images, per_image, "wrap")
    for i, (dy, dx) in enumerate(per_image.tolist()):
        assert torch.equal(moved[i], torch.roll(images[i], (dy, dx), (1, 2)))
    padded = R.translate(images, (2, 3), "pad", fill=0.25)
    assert torch.equal(padded[..., 2:, 3:], images[..., :-2, :-3])
    assert (padded[..., :2, :] == 0.25).all() and (padded[..., :, :3] == 0.25).all()
    with pytest.raises(ValueError, match="wrap"):
        R.translate(images, (1, 1), "mirror")


# --------------------------------------------------------------------------- metrics


def test_metric_arithmetic_on_hand_cases() -> None:
    labels = torch.tensor([0, 1, 2, 1])
    assert R.accuracy_per_level([torch.tensor([0, 1, 2, 1]), torch.tensor([0, 0, 0, 1])], labels) == [1.0, 0.5]
    assert R.area_under_curve([0, 0.5, 1], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert R.area_under_curve([0, 1], [1.0, 0.0]) == pytest.approx(0.5)
    assert R.area_under_curve([0, 0.1, 0.9], [1.0, 1.0, 0.0]) == pytest.approx((0.1 + 0.8 * 0.5) / 0.9)
    assert R.area_under_curve([1, 2, 4, 8], [1.0, 1.0, 0.0, 0.0], "index") == pytest.approx(0.5)
    # CE: errors summed over severities over the reference's (Hendrycks & Dietterich).
    assert R.corruption_error([0.1, 0.2, 0.3], [0.2, 0.4, 0.6]) == pytest.approx(0.5)
    assert R.relative_corruption_error([0.2, 0.3], 0.1, [0.3, 0.5], 0.1) == pytest.approx((0.1 + 0.2) / (0.2 + 0.4))
    record = lambda clean, curves: {"clean_accuracy": clean, "tests": {"corruptions": {
        "levels": [1, 2], "curves": {name: {"accuracy": acc} for name, acc in curves.items()}}}}
    vit = record(0.9, {"noise": [0.8, 0.6], "blur": [0.9, 0.7], "mean": [0.85, 0.65]})    # "mean" is no corruption
    cnn = record(0.95, {"noise": [0.6, 0.4], "blur": [0.9, 0.9], "fog": [0.5, 0.5], "mean": [0.75, 0.65]})
    result = R.mean_corruption_error(vit, cnn)
    assert result["corruption_errors"] == pytest.approx({"noise": 0.6 / 1.0, "blur": 0.4 / 0.2})
    assert result["mce"] == pytest.approx((0.6 + 2.0) / 2)
    relative = R.mean_corruption_error(vit, cnn | {"clean_accuracy": 0.95}, relative=True)
    assert relative["corruption_errors"]["noise"] == pytest.approx((0.1 + 0.3) / (0.35 + 0.55))
    with pytest.raises(ValueError, match="no error"):
        R.corruption_error([0.1], [0.0])


def test_checks_name_the_allowed_values() -> None:
    assert R.check_tests(["translation", "occlusion"]) == ("occlusion", "translation")
    with pytest.raises(ValueError, match="unknown robustness test blur"):
        R.check_tests(["blur"])
    assert R.check_severities([3, 1, 3]) == (1, 3)
    with pytest.raises(ValueError, match="1 to 5"):
        R.check_severities([0])


# --------------------------------------------------------------------------- the evaluation


def test_evaluation_record_is_deterministic_and_starts_at_the_clean_accuracy(halves_dataset) -> None:
    data = halves_dataset(12, size=16, channels=3)
    vit = tiny_vit(num_classes=2)
    settings = R.RobustnessSettings.for_model(vit, data.image_shape, fractions=(0.0, 0.5), corruptions=("contrast",
                                              "gaussian_noise"), epsilons=(0.0, 0.1), pgd_steps=2, max_shift=2)
    assert settings.tokens and settings.patch_size == 4 and settings.grids == (1, 2, 4, 8)
    run = lambda: R.evaluate_robustness(vit, data, severities=(1, 5), settings=settings, batch_size=5, seed=3)
    first, second = run(), run()
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    clean = first["clean_accuracy"]
    with torch.no_grad():
        assert clean == (vit(data.normalized()).argmax(1) == data.labels).float().mean().item()
    tests = first["tests"]
    assert list(tests) == list(R.TESTS)
    assert set(tests["occlusion"]["curves"]) == {"random-pixels", "random-tokens", "salient-pixels", "salient-tokens"}
    for test in ("occlusion", "shuffle", "adversarial", "translation"):
        for curve in tests[test]["curves"].values():
            assert curve["accuracy"][0] == clean and curve["consistency"][0] == 1.0
            assert len(curve["accuracy"]) == len(tests[test]["levels"])
    assert tests["corruptions"]["levels"] == [1, 5] and "mean" in tests["corruptions"]["curves"]
    assert tests["translation"]["levels"] == [0, 1, 2]
    assert tests["adversarial"]["curves"]["pgd"]["accuracy"][1] <= clean


def test_cnn_is_occluded_on_the_vit_grid_by_pixels_only(halves_dataset) -> None:
    data = halves_dataset(6, size=28, channels=1)
    cnn = CNNClassifier(CNNConfig(arch="simple_cnn", image_size=28, in_channels=1, num_classes=2)).eval()
    settings = R.RobustnessSettings.for_model(cnn, data.image_shape, fractions=(0.0, 0.5))
    assert settings.patch_size == 7 and not settings.tokens and settings.grids == (1, 2, 4, 7)
    assert settings.epsilons == (0.0, 0.05, 0.1, 0.2, 0.3)
    result = R.evaluate_robustness(cnn, data, ["occlusion"], settings=settings)
    assert set(result["tests"]["occlusion"]["curves"]) == {"random-pixels", "salient-pixels"}


# --------------------------------------------------------------------------- the command


@pytest.mark.parametrize("args, message", [
    (["--tests", "occlusion,blur"], "unknown robustness test blur"),
    (["--severity", "0", "3"], "severities are integers from 1 to 5"),
    (["--severity", "6"], "severities are integers from 1 to 5"),
])
def test_cli_refuses_bad_tests_and_severities(args, message, capsys) -> None:
    assert main(["robustness", str(WEIGHTS / "vit_mnist"), *args]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


@pytest.mark.parametrize("run, message", [
    ("canvas-segmenter-linear", "is a segment run: vitlab robustness measures classifiers"),
    ("mnist-dino-vit_mnist", "holds a feature extractor"),
])
def test_cli_refuses_dense_runs_and_feature_extractors(run, message, capsys) -> None:
    assert main(["robustness", str(WEIGHTS / run)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_cli_writes_robustness_json_into_the_run(tmp_path, mnist_available, capsys) -> None:
    run = tmp_path / "vit_mnist"
    shutil.copytree(WEIGHTS / "vit_mnist", run)
    code = main(["robustness", str(run), "--tests", "shuffle,corruptions", "--severity", "1", "5", "--images", "40",
                 "--batch-size", "16", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "corruptions (severity)" in out and "wrote" in out
    record = json.loads((run / "robustness.json").read_text())
    assert record["model"] == "vit_mnist" and record["n"] == 40 and record["split"] == "test"
    assert list(record["tests"]) == ["shuffle", "corruptions"]
    assert record["tests"]["corruptions"]["levels"] == [1, 5]
    assert record["tests"]["shuffle"]["levels"] == [1, 2, 4, 7]
    assert 0.9 <= record["clean_accuracy"] <= 1.0                                   # the shipped model: ~98 %
    assert record["precision"] == Run(run).evaluation_precision()
