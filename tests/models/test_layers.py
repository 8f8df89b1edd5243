"""Shared transformer blocks: masks, NaN safety with padding, attention against a manual computation, dropout."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.models.layers import (
    Dropout,
    FeedForward,
    SelfAttention,
    TransformerBlock,
    attention_bias,
    keep_mask,
)


def allowed_keys(padding: torch.Tensor, causal: bool) -> torch.Tensor:
    """The reference: [batch, 1, seq_len, seq_len] bool, True where query i may attend to key j (j is a real
    item, and j <= i if causal), written out position by position."""
    batch, seq_len = padding.shape
    allowed = torch.zeros(batch, 1, seq_len, seq_len, dtype=torch.bool)
    for b in range(batch):
        for i in range(seq_len):
            for j in range(seq_len):
                allowed[b, 0, i, j] = not padding[b, j] and (j <= i or not causal)
    return allowed


def test_attention_bias_hides_padding_and_the_future() -> None:
    padding = torch.tensor([[True, False, False]])
    causal = attention_bias(padding, causal=True, dtype=torch.float32)[0, 0]
    hidden = causal < -1e30  # padding keys (large finite negative) and future keys (-inf)
    assert torch.equal(~hidden, allowed_keys(padding, causal=True)[0, 0])
    assert torch.isinf(causal[0, 1:]).all()  # future keys: -inf
    assert torch.isfinite(causal[:, 0]).all()  # the padding key: finite, so query 0 (nothing real to see) is no NaN
    bidirectional = attention_bias(padding, causal=False, dtype=torch.float32)[0, 0]  # [1, 3]: one row for all
    assert torch.equal(bidirectional[0] == 0, torch.tensor([False, True, True]))


def test_sasrec_block_is_the_reference_codes_formula() -> None:
    """q = LN1(x); x = q + Attn(queries from q, keys/values from x); x = LN2(x); x + FFN(x)."""
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 8, 0.0, activation="relu", layer_norm="sasrec").eval()
    x = torch.randn(2, 5, 8)
    mask = attention_bias(torch.zeros(2, 5, dtype=torch.bool), causal=True, dtype=torch.float32)

    q_in = block.norm1(x)
    weights, biases = block.attn.qkv.weight.split(8), block.attn.qkv.bias.split(8)  # q, k, v
    query = q_in @ weights[0].T + biases[0]
    key, value = x @ weights[1].T + biases[1], x @ weights[2].T + biases[2]
    outs = []
    for h in (slice(0, 4), slice(4, 8)):
        logits = query[..., h] @ key[..., h].transpose(1, 2) / math.sqrt(4) + mask[:, 0]  # [2, 5, 5]
        outs.append(torch.softmax(logits, dim=-1) @ value[..., h])
    hidden = block.norm2(q_in + block.attn.out(torch.cat(outs, dim=-1)))
    expected = hidden + block.ffn(hidden)
    torch.testing.assert_close(block(x, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_bias_gives_real_queries_the_same_attention_as_the_reference_mask(causal: bool) -> None:
    torch.manual_seed(0)
    padding = torch.tensor([[True, True, True, False, False, False], [False] * 6, [True] * 6])
    q, k, v = (torch.randn(3, 2, 6, 4) for _ in range(3))
    bias = attention_bias(padding, causal=causal, dtype=torch.float32)
    assert bias.shape == ((3, 1, 6, 6) if causal else (3, 1, 1, 6))
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed_keys(padding, causal))
    real = ~padding  # [batch, seq_len]: query rows whose outputs anyone reads
    torch.testing.assert_close(got.transpose(1, 2)[real], want.transpose(1, 2)[real], atol=1e-6, rtol=1e-6)
    assert torch.isfinite(got).all()  # the all-padding row included


def test_attention_bias_rejects_non_bool() -> None:
    with pytest.raises(ValueError, match="bool"):
        attention_bias(torch.zeros(2, 3, dtype=torch.long), causal=True, dtype=torch.float32)


def test_self_attention_matches_manual_softmax() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(hidden=8, n_heads=2, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    padding = torch.tensor([[True, True, False, False, False], [False] * 5])
    mask = allowed_keys(padding, causal=True)  # SelfAttention takes any mask SDPA does
    mask = mask | torch.eye(5, dtype=torch.bool)  # padding queries see themselves, so no row is all False
    got = attn(x, mask)

    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    outs = []
    for h in heads:
        logits = q[..., h] @ k[..., h].transpose(1, 2) / math.sqrt(4)  # [2, 5, 5]
        logits = logits.masked_fill(~mask[:, 0], float("-inf"))
        outs.append(torch.softmax(logits, dim=-1) @ v[..., h])
    expected = attn.out(torch.cat(outs, dim=-1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("causal", [True, False])
def test_block_no_nan_with_all_padding_rows(layer_norm: str, activation: str, causal: bool) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 16, 0.1, activation=activation, layer_norm=layer_norm)  # type: ignore[arg-type]
    x = torch.randn(3, 6, 8)
    padding = torch.ones(3, 6, dtype=torch.bool)
    padding[1, 4:] = False  # mostly padding
    padding[2] = False
    for mode in (block.train(), block.eval()):
        y = mode(x, attention_bias(padding, causal=causal, dtype=torch.float32))
        assert y.shape == x.shape
        assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(hidden=10, n_heads=3, dropout=0.0)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 8, 0.0, activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer_norm"):
        TransformerBlock(8, 1, 8, 0.0, layer_norm="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize("layer_norm", ["pre", "post", "sasrec"])
def test_last_only_block_equals_the_last_row_of_the_full_block(layer_norm: str) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 32, 0.0, layer_norm=layer_norm).eval()
    x = torch.randn(3, 7, 16)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, :4] = True
    mask = attention_bias(padding, causal=True, dtype=torch.float32)
    full = block(x, mask)
    last = block(x, mask, last_only=True)
    assert last.shape == (3, 1, 16)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)


# -- Dropout ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_mask_drops_at_the_asked_rate_in_every_16_bit_slice(p: float) -> None:
    torch.manual_seed(0)
    keep = keep_mask((400_000,), p)
    # 4 mask elements share one 64-bit draw: each slice position must be unbiased on its own
    for lane in range(4):
        assert abs(1.0 - keep[lane::4].float().mean().item() - p) < 0.005
    assert keep.shape == (400_000,) and keep.dtype == torch.bool


def test_dropout_is_unbiased_and_its_gradient_is_its_mask() -> None:
    torch.manual_seed(1)
    dropout = Dropout(0.25).train()
    x = torch.full((300, 700), 2.0, requires_grad=True)
    y = dropout(x)
    kept = y.detach() != 0
    assert abs(1.0 - kept.float().mean().item() - 0.25) < 0.01
    assert torch.allclose(y.detach()[kept], torch.tensor(2.0 / 0.75))  # survivors scaled by 1 / (1 - p)
    assert abs(y.detach().mean().item() - 2.0) < 0.02
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)  # d out / d in: the same mask and scale


def test_dropout_repeats_under_the_same_seed_and_is_identity_in_eval() -> None:
    dropout = Dropout(0.3)
    x = torch.randn(64, 50, 32)
    torch.manual_seed(7)
    first = dropout(x)
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first)
    assert not torch.equal(dropout(x), first)  # the generator moved on
    assert dropout.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_dropout_odd_sizes_and_half_precision() -> None:
    torch.manual_seed(3)
    x = torch.ones(3, 5, 7, dtype=torch.bfloat16)  # 105 elements: not a multiple of 4
    y = Dropout(0.5).train()(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert set(y.unique().tolist()) <= {0.0, 2.0}
