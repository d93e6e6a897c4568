"""vitlab.pretrained: converters equal to timm / torchvision / Hugging Face, position-table resampling,
loading by name or file, and fine-tuning in the engine (--init, --freeze backbone, --layer-decay)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import vitlab.models.convert
from conftest import require_module
from vitlab import ViT, ViTConfig
from vitlab import pretrained as P
from vitlab.checkpoint import CheckpointError
from vitlab.cli import main
from vitlab.runs import Run, RunError, train_run
from vitlab.train import TrainConfig, layer_decay_groups, make_optimizer, set_train_mode

TOLERANCE = 1e-5


def _randomize(model: nn.Module, std: float = 0.2) -> nn.Module:
    """Random weights everywhere (libraries zero-initialize heads, class tokens, biases: a zero would hide
    a wrong mapping), scaled so the logits are far from zero."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, std)
    return model.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _images(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))


# ------------------------------------------------------------------------------------------ converters
def _timm_small(**kwargs):
    timm = require_module("timm")
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5, **kwargs)
    return _randomize(timm.models.VisionTransformer(**args))


def _torchvision_small(**kwargs):
    import torchvision

    args = dict(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=5)
    return _randomize(torchvision.models.VisionTransformer(**{**args, **kwargs}))


def _hf_config(**kwargs):
    transformers = require_module("transformers")
    args = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
                patch_size=8, num_labels=5)
    return transformers.ViTConfig(**{**args, **kwargs})


def test_timm_vit_converts_to_identical_logits():
    reference = _timm_small()
    images = _images(32)
    with torch.no_grad():
        expected = reference(images)
        from_model = P.from_timm(reference)
        from_state = P.from_timm(reference.state_dict(), heads=3)
        assert _max_diff(from_model(images), expected) <= TOLERANCE
        assert _max_diff(from_state(images), expected) <= TOLERANCE
    assert from_model.config.norm_eps == 1e-6 and from_model.config.mlp_ratio == 4.0
    assert from_state.config == from_model.config


def test_torchvision_vit_converts_to_identical_logits_with_and_without_pre_logits():
    images = _images(32)
    for kwargs in ({}, {"representation_size": 20}):
        reference = _torchvision_small(**kwargs)
        with torch.no_grad():
            expected = reference(images)
            for converted in (P.from_torchvision(reference), P.from_torchvision(reference.state_dict(), heads=3)):
                assert _max_diff(converted(images), expected) <= TOLERANCE, kwargs
        assert converted.config.representation_size == kwargs.get("representation_size")


def test_hugging_face_vit_converts_to_identical_logits_and_pooler_output():
    transformers = require_module("transformers")
    images = _images(32)
    config = _hf_config()
    classifier = _randomize(transformers.ViTForImageClassification(config))
    backbone = _randomize(transformers.ViTModel(config))
    with torch.no_grad():
        logits = classifier(pixel_values=images).logits
        assert _max_diff(P.from_hf(classifier)(images), logits) <= TOLERANCE
        assert _max_diff(P.from_hf(classifier.state_dict(), config.to_dict())(images), logits) <= TOLERANCE
        # ViTModel: its pooler (Linear + tanh on the class token) becomes the pre-logits layer.
        pooled = backbone(pixel_values=images).pooler_output
        converted = P.from_hf(backbone)
        assert converted.config.num_classes == 0 and converted.config.norm_eps == 1e-12
        assert _max_diff(converted(images), pooled) <= TOLERANCE


def test_hugging_face_checkpoints_with_transformers_4_names_convert_too():
    """Most Hub checkpoints were saved by transformers 4 (encoder.layer.N.attention.attention.query...)."""
    transformers = require_module("transformers")
    config = _hf_config()
    model = _randomize(transformers.ViTForImageClassification(config))
    legacy = {}
    for key, value in model.state_dict().items():
        for new, old in ((".attention.q_proj.", ".attention.attention.query."),
                         (".attention.k_proj.", ".attention.attention.key."),
                         (".attention.v_proj.", ".attention.attention.value."),
                         (".attention.o_proj.", ".attention.output.dense."), (".mlp.fc1.", ".intermediate.dense."),
                         (".mlp.fc2.", ".output.dense.")):
            key = key.replace(new, old)
        legacy[key.replace("vit.layers.", "vit.encoder.layer.")] = value
    assert "vit.encoder.layer.0.attention.attention.query.weight" in legacy
    images = _images(32)
    with torch.no_grad():
        assert _max_diff(P.from_hf(legacy, config.to_dict())(images), model(pixel_values=images).logits) <= TOLERANCE


@pytest.mark.parametrize("library", ["timm", "torchvision", "hf"])
def test_converters_at_the_real_vit_b16_size(library):
    """ViT-B/16 (86M parameters, 224x224, random weights): every tensor lands in the right place."""
    images = _images(224, n=2)
    if library == "timm":
        timm = require_module("timm")
        reference = _randomize(timm.create_model("vit_base_patch16_224", pretrained=False), std=0.02)
        run, convert = (lambda x: reference(x)), P.from_timm
    elif library == "torchvision":
        import torchvision

        reference = _randomize(torchvision.models.vit_b_16(weights=None), std=0.02)
        run, convert = (lambda x: reference(x)), P.from_torchvision
    else:
        transformers = require_module("transformers")
        reference = _randomize(transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000)),
                               std=0.02)
        run, convert = (lambda x: reference(pixel_values=x).logits), P.from_hf
    with torch.no_grad():
        expected = run(images)
        converted = convert(reference)
        actual = converted(images)
    config = converted.config
    assert (config.image_size, config.patch_size, config.dim, config.depth, config.heads) == (224, 16, 768, 12, 12)
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in reference.parameters())
    assert expected.std() > 0.01 and _max_diff(actual, expected) <= TOLERANCE


def test_variants_vitlab_does_not_implement_are_refused_by_name():
    with pytest.raises(ValueError, match="layer scale"):
        P.from_timm(_timm_small(init_values=1e-5))
    with pytest.raises(ValueError, match="global_pool='avg'"):
        P.from_timm(_timm_small(global_pool="avg"))
    # A state dict with tensors that have no place in vitlab's ViT is an error, not a silent drop.
    state = _timm_small(init_values=1e-5).state_dict()
    with pytest.raises(CheckpointError, match="no place in vitlab's ViT.*ls1"):
        P.from_timm(state, heads=3)
    # The tensors of a non-standard width do not say how many heads split it: asked for, not guessed.
    with pytest.raises(CheckpointError, match="cannot tell the number of attention heads of a 48-wide ViT"):
        P.from_timm(_timm_small().state_dict())
    with pytest.raises(CheckpointError, match="lack .* tensor"):
        P.from_timm({k: v for k, v in _timm_small().state_dict().items() if "blocks.1.mlp" not in k}, heads=3)


# ------------------------------------------------------------------------------ resampling and adapting
def test_resampling_the_position_table():
    table = torch.randn(1, 1 + 4 * 4, 8)
    assert torch.equal(P.resample_position_table(table, 4), table), "the same grid is the identity"
    bigger = P.resample_position_table(table, 7)
    assert bigger.shape == (1, 1 + 7 * 7, 8)
    assert torch.equal(bigger[:, 0], table[:, 0]), "the class token's entry is kept"
    # A smooth table (a linear ramp over the grid) stays that ramp, at the new resolution.
    rows = torch.linspace(-1, 1, 4).repeat_interleave(4).reshape(1, 16, 1)
    ramp = torch.cat([torch.zeros(1, 1, 1), rows], dim=1)
    resampled = P.resample_position_table(ramp, 8)[0, 1:, 0].reshape(8, 8)
    assert (resampled[1:, 0] >= resampled[:-1, 0]).all() and torch.allclose(resampled[:, 0], resampled[:, 5])
    with pytest.raises(ValueError, match="square grid"):
        P.resample_position_table(torch.randn(1, 1 + 12, 8), 4)


def test_adapt_gives_a_model_for_a_new_size_and_new_classes():
    model = _randomize(ViT(ViTConfig(image_size=32, in_channels=3, patch_size=8, dim=32, depth=2, heads=2,
                                     num_classes=10)))
    same = P.adapt(model)
    images = _images(32)
    with torch.no_grad():
        assert torch.equal(same(images), model(images)), "adapting to nothing new changes nothing"
    larger = P.adapt(model, num_classes=3, image_size=64)
    assert larger.config.image_size == 64 and larger.config.num_patches == 64 and larger.config.input_size is None
    assert larger.pos_embed.table.shape == (1, 65, 32) and larger(_images(64)).shape == (3, 3)
    assert torch.count_nonzero(larger.head.weight) == 0, "a new head starts at zero (ViT paper, fine-tuning)"
    # A new head reads the class token directly: a pre-logits layer goes too (ViT paper, fine-tuning).
    pooled = P.adapt(ViT(ViTConfig(dim=16, heads=2, depth=1, representation_size=16)), num_classes=4)
    assert pooled.config.representation_size is None and isinstance(pooled.pre_logits, nn.Identity)
    # 32x32 images into a 64x64 model: resized inside it.
    resized = P.adapt(model, image_size=64, input_size=32)
    assert resized.config.input_size == 32 and resized(images).shape == (3, 10)
    with pytest.raises(ValueError, match="expects 32x32 images but got 64x64"):
        resized(_images(64))


def test_layer_decay_scales_each_layer_and_freezing_leaves_only_the_head():
    model = ViT(ViTConfig(depth=3, dim=16, heads=2))
    groups = layer_decay_groups(model, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.head.weight)] == 1.0 and scale[id(model.norm.weight)] == 1.0
    assert scale[id(model.blocks[2].attn.qkv.weight)] == 0.5 and scale[id(model.blocks[0].mlp.fc1.weight)] == 0.125
    assert scale[id(model.patch_embed.proj.weight)] == scale[id(model.pos_embed.table)] == 0.0625
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3, layer_decay=0.5))
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [6.25e-5, 1.25e-4, 2.5e-4, 5e-4, 1e-3]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    # A CNN has no layer ids: a clear error, not a silent full-rate run.
    from vitlab.registry import create_model

    with pytest.raises(ValueError, match="layer-wise learning-rate decay needs"):
        make_optimizer(create_model("simple_cnn"), TrainConfig(layer_decay=0.5))
    from vitlab.train import freeze_backbone

    assert freeze_backbone(model) == ["head.weight", "head.bias"]
    set_train_mode(model)
    assert model.training and model.head.training and not model.blocks[0].training and not model.blocks[0].drop_path.training


# ---------------------------------------------------------------------------------------- loading files
def test_load_reads_weights_files_of_every_library_without_running_code(tmp_path):
    reference = _timm_small()
    images = _images(32)
    with torch.no_grad():
        expected = reference(images)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "timm.safetensors")
    torch.save({"model": reference.state_dict(), "epoch": 3}, tmp_path / "timm.pth")  # a training checkpoint
    for name in ("timm.safetensors", "timm.pth"):
        with torch.no_grad():
            assert _max_diff(P.load(str(tmp_path / name), heads=3)(images), expected) <= TOLERANCE, name
    # A pickle that would run code is refused (weights_only=True).
    torch.save({"model": reference.state_dict(), "hook": Run("x")}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="refused without running it"):
        P.load(str(tmp_path / "unsafe.pth"))
    (tmp_path / "corrupt.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt"):
        P.load(str(tmp_path / "corrupt.safetensors"))
    # A Hugging Face model folder (config.json + pytorch_model.bin), as save_pretrained writes it.
    transformers = require_module("transformers")
    hf = _randomize(transformers.ViTForImageClassification(_hf_config()))
    hf.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert _max_diff(P.load(str(tmp_path / "hf"))(images), hf(pixel_values=images).logits) <= TOLERANCE
    # Adapted on the way in: new head, new size.
    adapted = P.load(str(tmp_path / "timm.safetensors"), num_classes=2, image_size=64, heads=3)
    assert adapted(_images(64)).shape == (3, 2)
    with pytest.raises(FileNotFoundError, match="neither timm:NAME"):
        P.load(str(tmp_path / "missing.pth"))


def test_hub_names_offline_give_one_clear_error_quickly(tmp_path, monkeypatch):
    """No network (simulated, so the test means the same on a connected machine): one error that names
    what could not be fetched and how to pass a local file, within seconds, not after a minute of retries."""
    require_module("timm")
    require_module("transformers")
    import huggingface_hub.constants

    monkeypatch.setattr(vitlab.models.convert, "_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(urllib.request, "getproxies", lambda: {})  # behind a proxy the probe is skipped
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (simulated by the test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    for spec in ("timm:vit_tiny_patch16_224", "torchvision:vit_b_16", "hf:google/vit-base-patch16-224"):
        started = time.perf_counter()
        with pytest.raises(P.WeightsUnavailableError) as error:
            P.load(spec)
        assert time.perf_counter() - started < 20
        message = str(error.value)
        assert message.startswith(f"could not fetch {spec}") and "--init path/to/model.safetensors" in message
    with pytest.raises(ValueError, match="timm has no model 'vit_nonexistent'"):
        P.load("timm:vit_nonexistent")
    with pytest.raises(ValueError, match="torchvision has no model 'vit_z_99'.*vit_b_16"):
        P.load("torchvision:vit_z_99")
    with pytest.raises(ValueError, match="resnet50 is not a plain VisionTransformer"):
        P.load("timm:resnet50")
    with pytest.raises(ValueError, match="no pretrained weights 'vit_tiny_patch16_224.nope'.*augreg_in21k"):
        P.load("timm:vit_tiny_patch16_224.nope")


# ------------------------------------------------------------------------------------ fine-tuning runs
@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, folder_dataset):
    """A small ViT trained on a folder dataset: the checkpoint the fine-tuning tests start from."""
    root = tmp_path_factory.mktemp("transfer")
    data = folder_dataset(root / "images")
    run = train_run("vit_seed", f"folder:{data}", root / "pretrained", model_args={"image_size": 16}, seed=0,
                    recipe={"epochs": 1, "batch_size": 8}, progress=False, verbose=False)
    return run, data


def test_linear_probe_trains_only_the_head(pretrained_run, tmp_path):
    source, data = pretrained_run
    run = train_run(None, f"folder:{data}", tmp_path / "probe", init=str(source.path), seed=1,
                    recipe={"freeze": "backbone", "epochs": 2, "batch_size": 8, "lr": 1e-2},
                    progress=False, verbose=False)
    before, after = source.model().state_dict(), run.model().state_dict()
    backbone = [k for k in before if not k.startswith("head.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone), "the backbone did not change"
    assert torch.count_nonzero(after["head.weight"]) > 0, "the zero-initialized head learned"
    config, metrics = run.config(), run.metrics()
    assert config["init"]["spec"] == str(source.path) and config["train"]["freeze"] == "backbone"
    assert config["train"]["lr"] == 1e-2 and config["train"]["weight_decay"] == 0.0, "probe recipe + overrides"
    assert metrics["trainable_params"] == after["head.weight"].numel() + after["head.bias"].numel()


def test_fine_tuning_run_resumes_without_its_pretrained_source(pretrained_run, tmp_path, monkeypatch):
    """Interrupted after its first epoch, a fine-tuning run continues from its own checkpoint (the
    pretrained file may be gone) to the same weights as an uninterrupted run."""
    import shutil

    source, data = pretrained_run
    init = str(shutil.copytree(source.path, tmp_path / "init"))
    args = dict(init=init, seed=3, recipe={"epochs": 2, "batch_size": 8, "layer_decay": 0.75}, progress=False,
                verbose=False)
    straight = train_run(None, f"folder:{data}", tmp_path / "straight", **args)

    original = Run.write_history

    def interrupt_after_first_epoch(self, history, fields):
        original(self, history, fields)
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "write_history", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(None, f"folder:{data}", tmp_path / "resumed", **args)
    monkeypatch.setattr(Run, "write_history", original)
    shutil.rmtree(init)  # the pretrained model is not needed to resume
    resumed = train_run(None, f"folder:{data}", tmp_path / "resumed", resume=True, **args)
    assert resumed.metrics()["epochs"] == 2
    a, b = straight.model().state_dict(), resumed.model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(RunError, match="fine-tuned from"):
        train_run(None, f"folder:{data}", tmp_path / "resumed", resume=True, **{**args, "init": str(source.path)})


def test_cli_fine_tunes_from_a_local_file_at_a_new_resolution(pretrained_run, tmp_path, capsys):
    timm = require_module("timm")
    source, data = pretrained_run
    # From a run folder: a linear probe, with the classes relabelled in a new order.
    code = main(["train", "--init", str(source.path), "--dataset", f"folder:{data}", "--classes", "right,left",
                 "--freeze", "backbone", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "probe"),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    probe = Run(tmp_path / "probe")
    assert probe.config()["dataset"]["classes"] == ["right", "left"] and probe.config()["train"]["freeze"] == "backbone"
    assert probe.metrics()["trainable_params"] == 2 * source.model().config.dim + 2
    # ViT-Ti's width (192, so 3 heads: a bare state dict does not say), one block, 16x16 images.
    reference = timm.models.VisionTransformer(img_size=16, patch_size=4, embed_dim=192, depth=1, num_heads=3,
                                              num_classes=7)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "timm.safetensors")
    code = main(["train", "--init", str(tmp_path / "timm.safetensors"), "--dataset", f"folder:{data}",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "run"),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    run = Run(tmp_path / "run")
    config = run.model().config
    # The 16x16 model now runs at 32x32 (8x8 patches of 4 px), and the folder's images are decoded at
    # that size (a named dataset with its own size is resized inside the model instead: test_adapt...).
    assert (config.image_size, config.input_size, config.num_patches, config.num_classes) == (32, None, 64, 2)
    assert run.metrics()["test_n"] == 20 and run.dataset("test").image_shape == (3, 32, 32)
    # Nonsense combinations are one-line errors.
    for argv, message in ((["--init", str(tmp_path / "timm.safetensors"), "--model", "vit_mnist"], "no model name"),
                          (["--model", "vit_seed", "--image-size", "32"], "for fine-tuning"),
                          (["--init", "timm:vit_tiny_patch16_224x"], "timm has no model"),
                          (["--init", str(tmp_path / "nothing.pth")], "neither timm:NAME")):
        assert main(["train", "--dataset", f"folder:{data}", "--out", str(tmp_path / "x"), *argv]) == 2
        assert message in capsys.readouterr().err


def test_select_classes_relabels_in_order(pretrained_run):
    from vitlab.data import load_dataset

    _, data = pretrained_run
    full = load_dataset(f"folder:{data}", "test")
    right = load_dataset(f"folder:{data}", "test", classes=["right"])
    assert right.classes == ["right"] and len(right) == 10 and set(right.labels.tolist()) == {0}
    assert torch.equal(right.images, full.images[full.labels == 1])
    swapped = full.select_classes([1, "left"])
    assert swapped.classes == ["right", "left"] and torch.equal(swapped.labels, 1 - full.labels)
    with pytest.raises(ValueError, match="no class 'up'; its classes are left, right"):
        full.select_classes(["up"])
    with pytest.raises(ValueError, match="each once"):
        full.select_classes(["left", 0])


@pytest.mark.usefixtures("mnist_available")
def test_fine_tuning_at_a_larger_size_resizes_a_named_dataset_inside_the_model(tmp_path):
    """MNIST is 28x28: fine-tuning the shipped vit_mnist at 56x56 resamples its 4x4 position grid to 8x8 and
    resizes the digits inside the model; the run folder reloads that model and its 28x28 test split."""
    from vitlab.checkpoint import shipped_run

    run = train_run(None, "mnist", tmp_path / "mnist56", init=str(shipped_run("vit_mnist")), image_size=56,
                    subset=256, test_subset=100, recipe={"epochs": 1, "max_steps_per_epoch": 2},
                    progress=False, verbose=False)
    model, test_set = run.model(), run.dataset("test")
    assert (model.config.image_size, model.config.input_size, model.config.num_patches) == (56, 28, 64)
    assert test_set.image_shape == (1, 28, 28) and len(test_set) == 100
    assert run.metrics()["test_accuracy"] > 0.5, "the pretrained digit features survive the resampling"
