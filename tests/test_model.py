
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.model import PRESETS, ViT, ViTConfig, count_parameters, create_model
from vitlab.registry import model_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_forward_shapes(name):
    config = PRESETS[name]
    model = create_model(name).eval()
    images = torch.randn(2, config.in_channels, config.image_size, config.image_size)
    logits, maps = model(images, return_attention=True)
    assert logits.shape == (2, config.num_classes)
    assert maps.shape == (config.depth, 2, config.heads, config.num_tokens, config.num_tokens)
    assert torch.allclose(model(images), logits, atol=1e-5)


def test_vit_seed_is_the_walkthrough_model():
    config = PRESETS["vit_seed"]
    assert (config.image_size, config.patch_size, config.dim, config.depth, config.heads) == (28, 4, 8, 2, 2)
    assert config.num_patches == 49 and config.num_tokens == 50
    model = create_model("vit_seed")
    assert model.tokens(torch.randn(3, 1, 28, 28)).shape == (3, 50, 8)


def test_gradients_reach_every_parameter():
    for name in ("vit_seed", "vit_mnist"):
        model = create_model(name, dropout=0.1)
        loss = F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        for pname, param in model.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, pname


def test_logits_not_probabilities():
    model = create_model("vit_mnist")
    logits = model(torch.randn(8, 1, 28, 28))
    assert not torch.allclose(logits.sum(1), torch.ones(8))


def test_config_round_trip_and_validation():
    config = model_config("vit_cifar", num_classes=100)
    assert ViTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        ViTConfig.from_dict({**config.to_dict(), "layers": 3})
    with pytest.raises(ValueError, match="does not divide"):
        ViTConfig(image_size=28, patch_size=5)
    with pytest.raises(ValueError, match="divisible"):
        ViTConfig(dim=10, heads=4)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vit_huge")


def test_bad_inputs_are_clear_errors():
    model = create_model("vit_mnist")
    with pytest.raises(ValueError, match="1-channel"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="28x28"):
        model(torch.randn(2, 1, 32, 32))


def test_seed_fixes_initialization():
    vitlab.seed_everything(3)
    a = create_model("vit_mnist")
    vitlab.seed_everything(3)
    b = create_model("vit_mnist")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_mean_pooling_and_positional_kinds():
    for positional in ("sinusoidal", "learned", "none"):
        model = ViT(model_config("vit_seed", positional=positional, pool="mean"))
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_parameter_count_is_what_the_layers_hold():
    config = PRESETS["vit_seed"]
    d, p2, hidden = config.dim, config.patch_size ** 2, int(config.dim * config.mlp_ratio)
    per_block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    expected = (p2 * d + d) + d + config.depth * per_block + 2 * d + (d * 10 + 10)  # sinusoidal: no params
    assert count_parameters(create_model("vit_seed")) == expected


def test_device_choice():
    assert vitlab.pick_device().type in ("cpu", "cuda", "mps")
    assert vitlab.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            vitlab.pick_device("cuda")
