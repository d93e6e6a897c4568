import subprocess
import sys

import pytest
import torch

from vitlab.checkpoint import load_model, shipped_run
from vitlab.explain import (
    attention_maps,
    attention_rollout,
    class_token_attention,
    grad_cam,
    normalize_maps,
    rollout_matrix,
    upsample,
)
from vitlab.model import create_model


@pytest.fixture(scope="module")
def trained():
    return load_model(shipped_run("vit_mnist"))


def test_attention_maps_shapes_and_rows(trained):
    images = torch.randn(3, 1, 28, 28)
    maps = attention_maps(trained, images)
    config = trained.config
    assert maps.shape == (config.depth, 3, config.heads, config.num_tokens, config.num_tokens)
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)


def test_fast_path_unchanged_by_maps():
    model = create_model("vit_mnist", dropout=0.1)
    model.train()
    images = torch.randn(4, 1, 28, 28)
    model.eval()
    fast = model(images)
    logits, _ = model(images, return_attention=True)
    assert torch.allclose(fast, logits, atol=1e-5)
    model.train()
    attention_maps(model, images)
    assert model.training, "attention_maps restores the training flag"
    model.eval()
    assert torch.equal(model(images), fast), "computing maps changes no weights or state"


def test_rollout_rows_sum_to_one_before_final_normalization():
    maps = torch.rand(4, 2, 3, 10, 10).softmax(-1)
    for fusion in ("mean", "max", "min"):
        for discard in (0.0, 0.5):
            joint = rollout_matrix(maps, fusion, discard)
            assert joint.shape == (2, 10, 10)
            assert torch.allclose(joint.sum(-1), torch.ones(2, 10), atol=1e-5), (fusion, discard)
    with pytest.raises(ValueError):
        rollout_matrix(maps, "median")


def test_rollout_one_layer_by_hand():
    weights = torch.rand(1, 1, 2, 5, 5).softmax(-1)
    expected = 0.5 * weights[0, 0].mean(0) + 0.5 * torch.eye(5)
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(rollout_matrix(weights)[0], expected, atol=1e-6)
    patch_map = attention_rollout(weights)
    assert patch_map.shape == (1, 2, 2)
    assert torch.allclose(patch_map[0].flatten(), expected[0, 1:] / expected[0, 1:].max(), atol=1e-6)
    assert attention_rollout(weights, image_size=8).shape == (1, 8, 8)


def test_class_token_attention_and_upsample(trained):
    maps = attention_maps(trained, torch.randn(2, 1, 28, 28))
    raw = class_token_attention(maps, layer=0, head=1)
    assert raw.shape == (2, 4, 4)
    assert torch.allclose(raw[0].flatten(), maps[0, 0, 1, 0, 1:])
    assert upsample(raw, 28).shape == (2, 28, 28)


def test_grad_cam_matches_pytorch_grad_cam(trained):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    images = torch.randn(6, 1, 28, 28)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])

    def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        side = int(patches.shape[1] ** 0.5)
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)

    for block in (-1, 2):
        cam = GradCAM(model=trained, target_layers=[trained.blocks[block].norm1], reshape_transform=tokens_to_grid)
        theirs = torch.tensor(cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
        ours = upsample(normalize_maps(grad_cam(trained, images, target=targets, layer=block)), 28)
        assert ours.shape == theirs.shape == (6, 28, 28)
        assert (ours - theirs).abs().max() < 1e-3


def test_grad_cam_defaults_and_frozen_weights(trained):
    images = torch.randn(3, 1, 28, 28)
    for p in trained.parameters():
        p.requires_grad_(False)
    try:
        maps = grad_cam(trained, images)
    finally:
        for p in trained.parameters():
            p.requires_grad_(True)
    assert maps.shape == (3, 4, 4) and (maps >= 0).all()
    assert torch.equal(grad_cam(trained, images), grad_cam(trained, images, target=trained(images).argmax(1)))


@pytest.mark.usefixtures("mnist_available")
def test_cli_explain_writes_a_png(tmp_path):
    out = tmp_path / "fig.png"
    result = subprocess.run([sys.executable, "-m", "vitlab", "explain", str(shipped_run("vit_mnist")), "--images",
                             "0,1,2", "--method", "rollout,gradcam,attention", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "vitlab", "explain", str(shipped_run("vit_mnist")), "--method",
                          "saliency", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown method" in bad.stderr


def test_nearest_upsampling_keeps_each_patch_one_flat_block():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])                       # (1, 2, 2)
    blocky = upsample(maps, 4, mode="nearest")
    assert torch.equal(blocky, maps.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    smooth = upsample(maps, 4)
    assert not torch.equal(smooth, blocky) and len(smooth.unique()) > 4, "bilinear blends neighbouring patches"
    with pytest.raises(ValueError, match="bilinear.*nearest"):
        upsample(maps, 4, mode="bicubic")
