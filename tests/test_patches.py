import pytest
import torch

from vitlab.patches import PatchEmbedding, check_patch_size, num_patches, patchify, unpatchify


def naive_patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The walkthrough's double loop, kept here as the reference."""
    n, c, h, w = images.shape
    per_side = h // patch_size
    out = torch.zeros(n, per_side * per_side, c * patch_size * patch_size)
    for idx, image in enumerate(images):
        for i in range(per_side):
            for j in range(per_side):
                patch = image[:, i * patch_size:(i + 1) * patch_size, j * patch_size:(j + 1) * patch_size]
                out[idx, i * per_side + j] = patch.flatten()
    return out


def test_walkthrough_shape():
    images = torch.randn(5, 1, 28, 28)
    assert patchify(images, 4).shape == (5, 49, 16)
    assert num_patches(28, 4) == 49


@pytest.mark.parametrize("channels,size,patch", [(1, 28, 4), (1, 28, 7), (3, 32, 4), (3, 32, 8), (2, 12, 3)])
def test_vectorized_equals_naive_loop(channels, size, patch):
    images = torch.randn(3, channels, size, size)
    assert torch.equal(patchify(images, patch), naive_patchify(images, patch))


def test_unpatchify_inverts_patchify():
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(unpatchify(patchify(images, 8), 8, 32, 3), images)


def test_rectangular_images():
    images = torch.randn(2, 1, 8, 12)
    assert patchify(images, 4).shape == (2, 6, 16)
    assert torch.equal(unpatchify(patchify(images, 4), 4, (8, 12), 1), images)


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match=r"patch size 5 does not divide the image height 28"):
        patchify(torch.randn(1, 1, 28, 28), 5)
    with pytest.raises(ValueError, match="5.*28"):
        PatchEmbedding(28, 5, 1, 8)
    with pytest.raises(ValueError, match="positive"):
        check_patch_size(28, 0)


def test_patch_embedding_shape_and_conv_equivalence():
    embed = PatchEmbedding(28, 4, 1, 8)
    images = torch.randn(4, 1, 28, 28)
    tokens = embed(images)
    assert tokens.shape == (4, 49, 8)
    # The same linear map as a strided convolution.
    conv = torch.nn.Conv2d(1, 8, kernel_size=4, stride=4)
    conv.weight.data = embed.proj.weight.data.view(8, 1, 4, 4)
    conv.bias.data = embed.proj.bias.data
    expected = conv(images).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, expected, atol=1e-5)


def test_wrong_channel_count_is_a_clear_error():
    embed = PatchEmbedding(28, 4, 1, 8)
    with pytest.raises(ValueError, match="expects 1-channel images but got 3 channels"):
        embed(torch.randn(2, 3, 28, 28))


def test_wrong_image_size_is_a_clear_error():
    embed = PatchEmbedding(28, 4, 1, 8)
    with pytest.raises(ValueError, match="expects 28x28 images but got 32x32"):
        embed(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        embed(torch.randn(1, 28, 28))
