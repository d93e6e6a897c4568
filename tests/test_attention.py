import pytest
import torch
import torch.nn.functional as F

from vitlab.attention import MultiHeadSelfAttention, scaled_dot_product_attention
from vitlab.encoder import DropPath, EncoderBlock


def test_weights_sum_to_one_and_shapes():
    attn = MultiHeadSelfAttention(16, 4)
    out, weights = attn(torch.randn(3, 10, 16), return_attention=True)
    assert out.shape == (3, 10, 16)
    assert weights.shape == (3, 4, 10, 10)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 4, 10), atol=1e-6)
    assert (weights >= 0).all()


def test_fast_path_equals_explicit_path():
    attn = MultiHeadSelfAttention(32, 4).eval()
    x = torch.randn(2, 17, 32)
    fast = attn(x)
    explicit, _ = attn(x, return_attention=True)
    assert torch.allclose(fast, explicit, atol=1e-5)


def test_explicit_formula_equals_torch_sdpa():
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 9))


def test_loop_over_heads_equals_vectorized():
    attn = MultiHeadSelfAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    heads = []
    for h in range(4):
        rows = slice(h * 4, (h + 1) * 4)
        q = x @ wq[rows].T + bq[rows]
        k = x @ wk[rows].T + bk[rows]
        v = x @ wv[rows].T + bv[rows]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v)
    expected = attn.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_matches_torch_multihead_attention():
    ours = MultiHeadSelfAttention(16, 4).eval()
    theirs = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    theirs.in_proj_weight.data.copy_(ours.qkv.weight.data)
    theirs.in_proj_bias.data.copy_(ours.qkv.bias.data)
    theirs.out_proj.weight.data.copy_(ours.proj.weight.data)
    theirs.out_proj.bias.data.copy_(ours.proj.bias.data)
    x = torch.randn(2, 11, 16)
    expected, expected_weights = theirs(x, x, x, average_attn_weights=False)
    out, weights = ours(x, return_attention=True)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(weights, expected_weights, atol=1e-6)


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadSelfAttention(10, 3)


def test_encoder_block_is_pre_norm_residual():
    block = EncoderBlock(8, 2, mlp_ratio=4).eval()
    x = torch.randn(2, 5, 8)
    expected = x + block.attn(block.norm1(x))
    expected = expected + block.mlp(block.norm2(expected))
    assert torch.allclose(block(x), expected, atol=1e-6)
    out, weights = block(x, return_attention=True)
    assert torch.allclose(out, block(x), atol=1e-5) and weights.shape == (2, 2, 5, 5)


def test_drop_path_keeps_expectation_and_is_identity_in_eval():
    layer = DropPath(0.5)
    x = torch.ones(20000, 1)
    assert abs(layer(x).mean().item() - 1.0) < 0.05
    layer.eval()
    assert torch.equal(layer(x), x)
