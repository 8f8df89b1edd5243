"""Shared transformer blocks: masks, NaN safety with padding, attention against a manual computation."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.models.layers import FeedForward, SelfAttention, TransformerBlock, attention_mask


def test_attention_mask_causal_and_padding() -> None:
    padding = torch.tensor([[True, False, False]])
    mask = attention_mask(padding, causal=True)[0, 0]
    expected = torch.tensor(
        [
            [True, False, False],  # a padding query sees only itself
            [False, True, False],  # padding key 0 is hidden; future key 2 too
            [False, True, True],
        ]
    )
    assert torch.equal(mask, expected)


def test_attention_mask_bidirectional_sees_future_but_not_padding() -> None:
    padding = torch.tensor([[True, False, False]])
    mask = attention_mask(padding, causal=False)[0, 0]
    assert torch.equal(mask[1], torch.tensor([False, True, True]))
    # A padding query may look at real keys too: its output is ignored, it only must not be NaN.
    assert torch.equal(mask[0], torch.tensor([True, True, True]))
    assert not mask[:, 0][1:].any()  # no real query attends to the padding key


def test_sasrec_block_is_the_reference_codes_formula() -> None:
    """q = LN1(x); x = q + Attn(queries from q, keys/values from x); x = LN2(x); x + FFN(x)."""
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 8, 0.0, activation="relu", layer_norm="sasrec").eval()
    x = torch.randn(2, 5, 8)
    mask = attention_mask(torch.zeros(2, 5, dtype=torch.bool), causal=True)

    q_in = block.norm1(x)
    weights, biases = block.attn.qkv.weight.split(8), block.attn.qkv.bias.split(8)  # q, k, v
    query = q_in @ weights[0].T + biases[0]
    key, value = x @ weights[1].T + biases[1], x @ weights[2].T + biases[2]
    outs = []
    for h in (slice(0, 4), slice(4, 8)):
        logits = query[..., h] @ key[..., h].transpose(1, 2) / math.sqrt(4)  # [2, 5, 5]
        logits = logits.masked_fill(~mask[:, 0], float("-inf"))
        outs.append(torch.softmax(logits, dim=-1) @ value[..., h])
    hidden = block.norm2(q_in + block.attn.out(torch.cat(outs, dim=-1)))
    expected = hidden + block.ffn(hidden)
    torch.testing.assert_close(block(x, mask), expected, atol=1e-5, rtol=1e-5)


def test_attention_mask_rejects_non_bool() -> None:
    with pytest.raises(ValueError, match="bool"):
        attention_mask(torch.zeros(2, 3, dtype=torch.long), causal=True)


def test_self_attention_matches_manual_softmax() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(hidden=8, n_heads=2, dropout=0.0).eval()
    x = torch.randn(2, 5, 8)
    padding = torch.tensor([[True, True, False, False, False], [False] * 5])
    mask = attention_mask(padding, causal=True)
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
        y = mode(x, attention_mask(padding, causal=causal))
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
    mask = attention_mask(padding, causal=True)
    full = block(x, mask)
    last = block(x, mask, last_only=True)
    assert last.shape == (3, 1, 16)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
