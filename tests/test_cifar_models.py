"""The CNNs and the convolutional-tokenizer transformer of the CIFAR literature (vitlab.models.cifar_resnet,
vitlab.models.cct), each checked against a maintained implementation with the weights copied across:
pytorchcv's CIFAR ResNet-20 (option-B shortcuts) and lucidrains' vit-pytorch CCT (the reference code's block); and the
CIFAR experiment driver's candidate selection (tools/cifar_experiment.py), without training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tools import cifar_experiment as experiment

from conftest import require_module
from vitlab.cli import _model_overrides, build_parser
from vitlab.core.configs import ConfigError
from vitlab.models import create_model
from vitlab.models.cct import CCT, CCTConfig
from vitlab.models.cifar_resnet import PUBLISHED_ACCURACY, BasicBlock, CIFARResNet, CIFARResNetConfig
from vitlab.models.measure import count_parameters


def _copy_in_order(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy a state dict across two implementations whose tensors come in the same order and shapes."""
    theirs, mine = source.state_dict(), target.state_dict()
    assert len(theirs) == len(mine)
    for (a, x), (b, y) in zip(theirs.items(), mine.items()):
        assert x.shape == y.shape, (a, b)
    target.load_state_dict(dict(zip(mine, theirs.values())))


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so that a wrong wiring cannot hide behind an initialization."""
    generator = torch.Generator().manual_seed(0)
    state = model.state_dict()
    for name, value in state.items():
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator) * 0.2
            state[name] = noise.abs() + 0.5 if name.endswith("running_var") else noise
    model.load_state_dict(state)
    return model.eval()


def test_resnet20_and_56_have_the_papers_size() -> None:
    """He et al.: 0.27M and 0.85M parameters (option A shortcuts have none)."""
    assert count_parameters(create_model("resnet20")) == 269_722
    assert count_parameters(create_model("resnet56")) == 853_018
    assert PUBLISHED_ACCURACY["resnet20"] == 91.25 and PUBLISHED_ACCURACY["resnet56"] == 93.03
    option_b = CIFARResNet(CIFARResNetConfig(depth=20, shortcut="B"))
    assert count_parameters(option_b) - 269_722 == (16 * 32 + 32 * 64) + 2 * (32 + 64)  # two 1x1 convs + BN


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    block = BasicBlock(16, 32, stride=2, shortcut="A")
    x = torch.randn(2, 16, 8, 8)
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))  # 8 new channels before, 8 after
    assert torch.equal(block.shortcut(x), expected)
    assert torch.equal(BasicBlock(16, 16, 1, "A").shortcut(x), x)


def test_resnet20_option_b_equals_pytorchcv() -> None:
    pytorchcv = require_module("pytorchcv.models.resnet_cifar")
    reference = _randomize(pytorchcv.resnet20_cifar10())
    mine = CIFARResNet(CIFARResNetConfig(depth=20, shortcut="B")).eval()
    _copy_in_order(reference, mine)
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(mine(images), reference(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, depth, heads, mlp_ratio, dim", [("cct_2_3x2", 2, 2, 1, 128), ("cct_4_3x2", 4, 2, 1, 128)])
def test_cct_equals_vit_pytorch(name: str, depth: int, heads: int, mlp_ratio: float, dim: int) -> None:
    cct = require_module("vit_pytorch.cct")
    reference = cct.CCT(img_size=32, embedding_dim=dim, n_conv_layers=2, kernel_size=3, stride=1, padding=1,
                        num_layers=depth, num_heads=heads, mlp_ratio=mlp_ratio, num_classes=10,
                        positional_embedding="learnable")
    reference = _randomize(reference)
    mine = create_model(name).eval()
    mine.load_state_dict({_vitlab_cct_name(k): v for k, v in reference.state_dict().items()})
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(mine(images), reference(images), atol=1e-5, rtol=1e-5)
    assert count_parameters(mine) == sum(p.numel() for p in reference.parameters())


def _vitlab_cct_name(name: str) -> str:
    """vit-pytorch's (the reference code's) CCT parameter name -> vitlab's."""
    for theirs, mine in (("tokenizer.conv_layers.", "tokenizer.convs."), ("classifier.positional_emb", "pos_embed"),
                         ("classifier.attention_pool.", "pool.score."), ("classifier.fc.", "head."),
                         ("classifier.norm.", "norm."), ("classifier.blocks.", "blocks."), ("pre_norm", "norm0"),
                         ("self_attn.", "attn."), ("linear1", "mlp.fc1"), ("linear2", "mlp.fc2")):
        name = name.replace(theirs, mine)
    return name


def test_cct_tokens_and_sequence_pooling() -> None:
    model = create_model("cct_2_3x2").eval()
    assert model.config.num_tokens == 64  # 32 -> 16 -> 8: two halvings
    tokens = model.forward_features(torch.randn(3, 3, 32, 32))
    assert tokens.shape == (3, 64, 128)
    weights = torch.softmax(model.pool.score(tokens).squeeze(-1), dim=1)  # by hand: softmax over the tokens
    torch.testing.assert_close(model.pool(tokens), (weights[:, :, None] * tokens).sum(1))
    assert count_parameters(model) == 283_723  # the paper's 0.28M
    with pytest.raises(ValueError, match="32x32"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ConfigError, match="divisible"):
        CCTConfig(image_size=30)
    with pytest.raises(ConfigError, match="6n"):
        CIFARResNetConfig(depth=21)


def test_both_families_train_through_the_engine(halves_dataset) -> None:
    from vitlab.engine.train import TrainConfig, fit

    data = halves_dataset(64, size=32, channels=3)
    for model in (CIFARResNet(CIFARResNetConfig(depth=8, num_classes=2)), CCT(CCTConfig(depth=1, num_classes=2))):
        history = fit(model, data, None, TrainConfig(epochs=2, batch_size=16, precision="fp32"), progress=False)
        assert history[-1]["train_loss"] < history[0]["train_loss"] + 0.5 and len(history) == 2


def test_cifar_experiment_search_runs_only_the_named_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tools/cifar_experiment.py search --only ...` trains just those candidates, each with its own flags, and
    every candidate's flags are ones `vitlab train` accepts for its model (a typo would cost a 5-minute run)."""
    trained: list[tuple[str, str, list[str], int, int]] = []
    monkeypatch.setattr(experiment, "train", lambda label, model, flags, budget, seed, _: trained.append(
        (label, model, flags, budget, seed)))
    monkeypatch.setattr(experiment, "ranked", lambda labels, budget: [])
    assert experiment.main(["search", "--round", "1", "--only", "vit-p8-light", "vit-d4-light"]) == 0
    assert [t[0] for t in trained] == ["vit-d4-light", "vit-p8-light"]   # in the table's order, seed 0, 5 minutes
    assert trained[1] == ("vit-p8-light", "vit_cifar_small", ["--augment", "cifar", "--model-arg", "patch_size=8"],
                          300, 0)
    with pytest.raises(SystemExit):
        experiment.main(["search", "--only", "vit-p3"])   # not a candidate: refused by the parser
    parser = build_parser()
    for label, (model, _, flags) in experiment.CANDIDATES.items():
        args = parser.parse_args(["train", "--model", model, "--dataset", "cifar10", "--out", "x", *flags])
        net = create_model(model, **_model_overrides(args.model_arg))   # the size it asks for builds
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10), label
