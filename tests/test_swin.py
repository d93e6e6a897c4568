"""The Swin Transformer (vitlab.swin): windows, relative position bias, the shifted-window mask checked
against first principles, patch merging, the pyramid, timm equivalence, and training through the engine."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import require_module
from vitlab import pretrained as P
from vitlab.configs import ConfigError
from vitlab.explain import explanations
from vitlab.registry import create_model
from vitlab.runs import Run, train_run
from vitlab.swin import (
    PatchMerging,
    Swin,
    SwinBlock,
    SwinConfig,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_region_ids,
    window_reverse,
)

TOLERANCE = 1e-5


def test_partition_then_reverse_is_the_identity_and_windows_hold_neighbours():
    grid = torch.randn(2, 8, 12, 5)                                   # (N, H, W, C), not square on purpose
    windows = window_partition(grid, 4)
    assert windows.shape == (2 * 2 * 3, 16, 5)
    assert torch.equal(window_reverse(windows, 4, 8, 12), grid)
    # Window 4 of image 0 is row-block 1, column-block 1: rows 4..7, columns 4..7, flattened row by row.
    assert torch.equal(windows[4], grid[0, 4:8, 4:8].reshape(16, 5))
    assert torch.equal(windows[6], grid[1, 0:4, 0:4].reshape(16, 5)), "image 1's windows follow image 0's six"
    with pytest.raises(ValueError, match="cannot be cut"):
        window_partition(torch.zeros(1, 6, 6, 1), 4)


@pytest.mark.parametrize("m", [1, 2, 4, 7])
def test_relative_position_index_covers_the_table_and_encodes_the_offset(m):
    index = relative_position_index(m)
    table_size = (2 * m - 1) ** 2
    assert index.shape == (m * m, m * m) and index.dtype == torch.long
    assert index.min() >= 0 and index.max() < table_size, "every index is inside the table"
    assert len(index.unique()) == table_size, "every offset occurs, so every table row is used"
    for i in range(m * m):                                             # by hand, one pair at a time
        for j in range(m * m):
            dy, dx = i // m - j // m, i % m - j % m
            assert index[i, j] == (dy + m - 1) * (2 * m - 1) + (dx + m - 1)
    center = (m - 1) * (2 * m - 1) + (m - 1)                           # offset (0, 0)
    assert torch.all(index.diagonal() == center)
    assert torch.equal(index + index.T, torch.full_like(index, 2 * center)), "(dy, dx) and (-dy, -dx) mirror"


def test_the_shift_mask_allows_exactly_the_pairs_that_were_neighbours_before_the_roll():
    size, m, shift = 8, 4, 2
    mask = shifted_window_mask(size, size, m, shift)                   # (windows, M*M, M*M)
    assert mask.shape == (4, 16, 16) and mask.dtype == torch.bool
    # First principles: token at rolled (y, x) came from ((y + shift) % size, (x + shift) % size). Two
    # tokens of one window may attend iff the roll did not wrap between them: their offset is the same
    # before and after the roll.
    rolled = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1)
    original = (rolled + shift) % size
    rolled_w = window_partition(rolled.view(1, size, size, 2), m)      # (windows, M*M, 2)
    original_w = window_partition(original.view(1, size, size, 2), m)
    same_offset = ((rolled_w[:, :, None] - rolled_w[:, None, :]) == (original_w[:, :, None] - original_w[:, None, :]))
    assert torch.equal(mask, same_offset.all(-1))
    assert torch.all(mask.diagonal(dim1=1, dim2=2)), "a token may always attend to itself"
    regions = [len(torch.unique(w)) for w in window_partition(window_region_ids(size, size, m, shift)
                                                             .view(1, size, size, 1), m).squeeze(-1)]
    assert regions == [1, 2, 2, 4], "top-left window whole; the right/bottom ones split by the wrap-around"
    assert mask[0].all() and not mask[3].all()


def _full_attention_reference(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Shifted-window attention as ordinary attention over all H*W tokens, with an explicit mask:
    a pair may attend iff it lies in one shifted window and was adjacent before the roll; its bias
    is the table entry of its offset."""
    attn, (n, size, _, dim), m, shift = block.attn, x.shape, block.window_size, block.shift
    q, k, v = attn.qkv(x.reshape(n, size * size, dim)).view(n, -1, 3, attn.heads, dim // attn.heads).permute(
        2, 0, 3, 1, 4)
    y, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    original = torch.stack([y.flatten(), xx.flatten()], -1)                              # (T, 2)
    rolled = (original - shift) % size                                                   # where the roll puts it
    same_window = ((rolled[:, None] // m) == (rolled[None] // m)).all(-1)
    adjacent = ((rolled[:, None] - rolled[None]) == (original[:, None] - original[None])).all(-1)
    offset = original[:, None] - original[None]                                          # (T, T, 2)
    row = ((offset[..., 0] + m - 1) * (2 * m - 1) + offset[..., 1] + m - 1).clamp(0, (2 * m - 1) ** 2 - 1)
    bias = attn.relative_position_bias_table[row].permute(2, 0, 1)                      # (heads, T, T)
    bias = bias.masked_fill(~(same_window & adjacent), float("-inf"))
    weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(n, size * size, dim)
    return attn.proj(out).view(n, size, size, dim)


@pytest.mark.parametrize("shift", [0, 2])
def test_shifted_window_attention_equals_full_attention_with_the_explicit_mask(shift):
    block = SwinBlock(dim=12, heads=3, resolution=8, window_size=4, shift=shift).eval()
    torch.nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)  # make the bias matter
    x = torch.randn(2, 8, 8, 12)
    with torch.no_grad():
        fast = block.window_attention(x)
        explicit, weights = block.window_attention(x, return_attention=True)
        reference = _full_attention_reference(block, x)
    assert (fast - reference).abs().max() <= TOLERANCE
    assert (explicit - reference).abs().max() <= TOLERANCE
    assert weights.shape == (2 * 4, 3, 16, 16) and torch.allclose(weights.sum(-1), torch.ones(8, 3, 16))
    if shift:
        masked = ~block.attn_mask                                        # (windows, T, T)
        assert torch.all(weights.view(2, 4, 3, 16, 16).permute(0, 2, 1, 3, 4)[:, :, masked] == 0)


def test_a_grid_no_larger_than_the_window_gets_one_window_and_no_shift():
    block = SwinBlock(dim=8, heads=2, resolution=4, window_size=7, shift=3)
    assert (block.window_size, block.shift, block.attn_mask) == (4, 0, None)
    assert block.attn.relative_position_bias_table.shape == (7 * 7, 2)
    with pytest.raises(ValueError, match="shift"):
        SwinBlock(dim=8, heads=2, resolution=8, window_size=4, shift=4)


def test_window_attention_fused_and_explicit_paths_agree_with_a_mask():
    attn = WindowAttention(dim=16, heads=4, window_size=2).eval()
    mask = shifted_window_mask(4, 4, 2, 1)
    x = torch.randn(3 * 4, 4, 16)                                      # 3 images, 4 windows each
    with torch.no_grad():
        fast = attn(x, mask)
        slow, weights = attn(x, mask, return_attention=True)
    assert (fast - slow).abs().max() <= TOLERANCE
    assert torch.all(weights.view(3, 4, 4, 4, 4).permute(0, 2, 1, 3, 4)[:, :, ~mask] == 0)


def test_patch_merging_concatenates_each_2x2_group_in_the_papers_order():
    merge = PatchMerging(dim=1)
    grid = torch.arange(16.0).view(1, 4, 4, 1)
    with torch.no_grad():
        merge.norm.weight.fill_(1.0)
        merge.norm.bias.zero_()
        merge.reduction.weight.copy_(torch.eye(2, 4))                  # keep the first two of the four
    captured = {}
    merge.norm.register_forward_hook(lambda _m, inputs, _o: captured.update(x=inputs[0]))
    out = merge(grid)
    assert out.shape == (1, 2, 2, 2)
    # Top-left group of the grid 0 1 / 4 5: top-left, bottom-left, top-right, bottom-right.
    assert captured["x"][0, 0, 0].tolist() == [0.0, 4.0, 1.0, 5.0]
    assert captured["x"][0, 1, 1].tolist() == [10.0, 14.0, 11.0, 15.0]
    with pytest.raises(ValueError, match="even grid"):
        merge(torch.zeros(1, 3, 3, 1))


def test_stages_form_a_pyramid_and_the_head_averages_the_last_one():
    model = create_model("swin_cifar").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outputs = model.stage_outputs(images)
        assert [tuple(o.shape) for o in outputs] == [(2, 16, 16, 48), (2, 8, 8, 96), (2, 4, 4, 192)]
        features = model.forward_features(images)
        assert features.shape == (2, 192, 4, 4)
        assert torch.allclose(model(images), model.head(model.norm(outputs[-1]).mean(dim=(1, 2))), atol=1e-6)
    blocks = [b for stage in model.stages for b in stage.blocks]
    assert [(b.window_size, b.shift) for b in blocks] == [(4, 0), (4, 2), (4, 0), (4, 2), (4, 0), (4, 0)]
    assert model.no_weight_decay() == {f"stages.{i}.blocks.{j}.attn.relative_position_bias_table"
                                       for i in range(3) for j in range(2)}
    rates = [b.drop_path.p for b in blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


def test_swin_configs_refuse_geometries_that_do_not_tile():
    with pytest.raises(ConfigError, match="do not tile"):
        SwinConfig(image_size=28, patch_size=2, window_size=4, depths=(2, 2), heads=(3, 6))
    with pytest.raises(ConfigError, match="cannot halve"):
        SwinConfig(image_size=28, patch_size=2, window_size=7, depths=(2, 2, 2), heads=(3, 6, 12))
    with pytest.raises(ConfigError, match="one head count per stage"):
        SwinConfig(depths=(2, 2), heads=(3,))
    with pytest.raises(ValueError, match="not divisible"):
        SwinConfig(embed_dim=48, heads=(5, 6, 12))
    restored = SwinConfig.from_dict(SwinConfig(depths=[2, 2, 2], heads=[3, 6, 12]).to_dict())  # JSON gives lists
    assert restored.depths == (2, 2, 2) and restored == SwinConfig()


def _timm_swin(**kwargs):
    timm = require_module("timm")
    args = dict(img_size=32, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12),
                num_classes=10)
    model = timm.models.swin_transformer.SwinTransformer(**{**args, **kwargs}).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # random weights large enough that the biases and the mask matter
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("kwargs", [{}, dict(img_size=28, in_chans=1, window_size=7, depths=(2, 2),
                                             num_heads=(3, 6))], ids=["cifar-issue-config", "swin_mnist"])
def test_timm_swin_converts_to_identical_logits(kwargs):
    reference = _timm_swin(**kwargs)
    model = P.from_timm(reference)
    assert isinstance(model, Swin)
    images = torch.randn(4, reference.patch_embed.proj.in_channels, *reference.patch_embed.img_size)
    with torch.no_grad():
        assert (model(images) - reference(images)).abs().max() <= TOLERANCE
    if not kwargs:
        assert model.config == SwinConfig(drop_path=0.0)
    else:
        assert model.config == dataclasses.replace(create_model("swin_mnist").config, drop_path=0.0)


def test_timm_swins_vitlab_cannot_match_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="do not tile"):
        P.from_timm(_timm_swin(img_size=28, in_chans=1))               # timm would pad 14 -> 16
    with pytest.raises(ValueError, match="absolute position"):
        P.from_timm(_with_ape(_timm_swin()))
    with pytest.raises(TypeError, match="from the model itself"):
        P.from_timm(_timm_swin().state_dict())


def _with_ape(model):
    model.absolute_pos_embed = torch.nn.Parameter(torch.zeros(1, 16, 16, 48))
    return model


def test_swin_trains_through_the_engine_and_explains_itself_with_grad_cam(folder_dataset, tmp_path):
    data = folder_dataset(tmp_path / "data")
    run = train_run("swin_cifar", f"folder:{data}", tmp_path / "run", recipe={"epochs": 15, "batch_size": 16, "lr": 2e-3,
                                                                   "augment": "none", "warmup_epochs": 0.0,
                                                                   "label_smoothing": 0.0},
                    model_args={"image_size": 16, "window_size": 4, "embed_dim": 16, "depths": [2, 1],
                                "heads": [2, 4]},
                    seed=0, progress=False, verbose=False)
    metrics = Run(run.path).metrics()
    assert metrics["test_accuracy"] >= 0.9, "the left/right halves are easy to tell apart"
    model = Run(run.path).model()
    assert isinstance(model, Swin) and model.config.depths == (2, 1) and model.stages[0].blocks[1].shift == 2
    images = torch.rand(2, 3, 16, 16)
    maps = explanations(model, images, methods=["gradcam"])
    assert maps["Grad-CAM"].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="use gradcam"):
        explanations(model, images, methods=["rollout"])
    assert F.softmax(model(images), -1).shape == (2, 2)


def test_a_swin_run_fine_tunes_on_new_classes_with_layer_decay_but_keeps_its_resolution(folder_dataset, tmp_path):
    data = folder_dataset(tmp_path / "data")
    args = dict(model_args={"image_size": 16, "window_size": 4, "embed_dim": 16, "depths": [2, 1], "heads": [2, 4]},
                progress=False, verbose=False)
    source = train_run("swin_cifar", f"folder:{data}", tmp_path / "source", recipe={"epochs": 1, "batch_size": 16},
                       **args)
    model = source.model()
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert model.num_layers == 5 and set(ids.values()) == set(range(5))
    assert ids["patch_embed.proj.weight"] == 0 and ids["stages.0.blocks.1.attn.qkv.weight"] == 2
    assert ids["stages.1.merge.reduction.weight"] == ids["stages.1.blocks.0.norm1.weight"] == 3
    assert ids["head.weight"] == 4
    tuned = train_run(None, f"folder:{data}", tmp_path / "tuned", init=str(source.path), classes=["right", "left"],
                      recipe={"epochs": 1, "batch_size": 16, "layer_decay": 0.75}, seed=1, progress=False,
                      verbose=False)
    tuned_model = tuned.model()
    assert isinstance(tuned_model, Swin) and tuned.config()["init"]["spec"] == str(source.path)
    before, after = model.state_dict()["patch_embed.proj.weight"], tuned_model.state_dict()["patch_embed.proj.weight"]
    assert 0 < (after - before).abs().max() < 0.01, "fine-tuning started from the source's weights and moved them"
    with pytest.raises(ValueError, match="does not resize a Swin"):
        train_run(None, f"folder:{data}", tmp_path / "resized", init=str(source.path), image_size=32,
                  recipe={"epochs": 1}, progress=False, verbose=False)
