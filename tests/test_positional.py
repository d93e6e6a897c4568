import math

import pytest
import torch

from vitlab.encoder import EncoderBlock
from vitlab.positional import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    make_positional_encoding,
    sinusoidal_positions,
)
from vitlab.tokens import ClassToken


def walkthrough_positions(n: int, d: int) -> torch.Tensor:
    result = torch.ones(n, d)
    for i in range(n):
        for j in range(d):
            result[i][j] = math.sin(i / (10000 ** (j / d))) if j % 2 == 0 else math.cos(i / (10000 ** ((j - 1) / d)))
    return result


def test_spot_values():
    table = sinusoidal_positions(50, 8)
    assert table.shape == (50, 8)
    # Position 0: sin(0) = 0 in even columns, cos(0) = 1 in odd columns.
    assert torch.equal(table[0], torch.tensor([0.0, 1.0] * 4))
    assert table[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-6)
    assert table[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-6)
    assert table[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 8)), abs=1e-6)
    assert table[7, 3].item() == pytest.approx(math.cos(7 / 10000 ** (2 / 8)), abs=1e-6)
    assert table[49, 6].item() == pytest.approx(math.sin(49 / 10000 ** (6 / 8)), abs=1e-6)


@pytest.mark.parametrize("n,d", [(50, 8), (17, 64), (5, 7)])
def test_matches_walkthrough_loop(n, d):
    assert torch.allclose(sinusoidal_positions(n, d), walkthrough_positions(n, d), atol=1e-5)


def test_values_bounded_and_rows_distinct():
    table = sinusoidal_positions(100, 32)
    assert table.abs().max() <= 1.0
    assert torch.unique(table, dim=0).shape[0] == 100


def test_encodings_add_per_position():
    tokens = torch.zeros(2, 50, 8)
    fixed = SinusoidalPositionalEncoding(50, 8)
    assert torch.allclose(fixed(tokens)[1], sinusoidal_positions(50, 8))
    assert not any(p.requires_grad for p in fixed.parameters())
    learned = LearnedPositionalEncoding(50, 8)
    assert learned(tokens).shape == (2, 50, 8)
    assert learned.table.requires_grad
    assert isinstance(make_positional_encoding("none", 50, 8), torch.nn.Identity)
    with pytest.raises(ValueError, match="unknown positional"):
        make_positional_encoding("rotary", 50, 8)


def test_class_token_prepended():
    token = ClassToken(8)
    out = token(torch.randn(3, 49, 8))
    assert out.shape == (3, 50, 8)
    assert torch.equal(out[:, 0], token.token[0].expand(3, 8))


def test_without_positions_attention_is_permutation_equivariant():
    block = EncoderBlock(8, 2).eval()
    tokens = torch.randn(2, 10, 8)
    perm = torch.randperm(10)
    assert torch.allclose(block(tokens)[:, perm], block(tokens[:, perm]), atol=1e-5)
    # Adding positions breaks the symmetry.
    pos = SinusoidalPositionalEncoding(10, 8)
    assert not torch.allclose(block(pos(tokens))[:, perm], block(pos(tokens[:, perm])), atol=1e-3)
