"""Transformer blocks shared by the sequence models (SASRec's causal stack, BERT4Rec's bidirectional one).

Read bottom-up: `attention_bias` -> `Dropout` -> `SelfAttention` -> `FeedForward` -> `TransformerBlock`. The
blocks take explicit arguments rather than a model config, because several models with different configs share
them.

Padding convention: sequences are LEFT-padded with item id 0, and the blocks receive `padding_mask`
([batch, seq_len] bool, True where the position is padding). A real position never attends to padding.
A padding query would then have nothing to attend to (softmax over an empty set is NaN), and with left
padding the first query rows of a short sequence see only padding; so padding keys get a large finite
negative bias rather than -inf (`attention_bias`). For real positions that changes nothing (the bias's
exponential is 0 next to any real key, and a real query always has itself); padding positions get a
finite, meaningless state that callers ignore.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["gelu", "relu"]
LayerNormPlacement = Literal["pre", "post", "sasrec"]


def attention_bias(padding_mask: Tensor, causal: bool, dtype: torch.dtype) -> Tensor:
    """The additive mask for `scaled_dot_product_attention`, built without any [batch, seq_len, seq_len]
    boolean: a large finite negative at padding keys ([batch, 1, 1, seq_len]) plus, if `causal`, a shared
    -inf upper triangle ([seq_len, seq_len]). Real queries attend exactly the real keys (at or before them
    if `causal`): the exponential of the large negative is 0. A padding query whose keys are all padding
    gets a finite, meaningless mix of them instead of NaN. A boolean [batch, seq_len, seq_len] mask,
    converted to an additive one, cost about as much as the attention itself when encoding every user on a CPU.
    Returns [batch, 1, 1, seq_len] (not causal) or [batch, 1, seq_len, seq_len] (causal).
    """
    if padding_mask.dim() != 2 or padding_mask.dtype != torch.bool:
        raise ValueError(
            f"padding_mask must be a [batch, seq_len] bool tensor, got {tuple(padding_mask.shape)} {padding_mask.dtype}"
        )
    # a quarter of the dtype's range: far below any score, and still finite after adding a few scores
    keys = padding_mask[:, None, None, :].to(dtype) * (torch.finfo(dtype).min / 4)  # [batch, 1, 1, seq_len]
    if not causal:
        return keys
    seq_len = padding_mask.shape[1]
    future = torch.full((seq_len, seq_len), float("-inf"), dtype=dtype, device=padding_mask.device).triu_(1)
    return keys + future  # [batch, 1, seq_len, seq_len]


DROPOUT_LEVELS = 1 << 16
"""Resolution of `Dropout`'s CPU masks: the drop probability is rounded to a multiple of 1/65,536."""


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> Tensor:
    """A CPU bool mask, True with probability 1 - p (p rounded to a multiple of 1 / DROPOUT_LEVELS).

    Each mask element compares a 16-bit slice of one 64-bit draw of torch's global generator: four elements
    per draw, where `bernoulli_` (what torch's dropout uses) draws at least once per element. Drawing the
    mask was about 30% of a BERT4Rec training step on CPU. Seeded like everything else (torch.manual_seed).
    """
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)[:n].view(shape)  # uniform over -32768..32767
    return bits >= round(p * DROPOUT_LEVELS) - DROPOUT_LEVELS // 2


class Dropout(nn.Module):
    """`nn.Dropout` with a cheaper mask on CPU (`keep_mask`); on other devices it is torch's own.

    Zeroes each element with probability p during training and scales the rest by 1 / (1 - p), with p the
    rounded drop probability, so the expected output equals the input exactly. Identity in eval mode.
    Holds no parameters: saved models load the same with either module.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        dropped = round(self.p * DROPOUT_LEVELS)
        if dropped == 0:
            return x
        scale = DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped)
        # A float mask (scale or 0) keeps the backward pass to one multiplication.
        return x * keep_mask(x.shape, self.p).to(x.dtype).mul_(scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (Vaswani et al., 2017) via torch's fused kernel."""

    def __init__(self, hidden: int, n_heads: int, dropout: float, attention_width: int | None = None) -> None:
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        if attention_width is not None and attention_width % n_heads != 0:
            raise ValueError(f"attention width ({attention_width}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.attention_width = attention_width
        if attention_width is None:
            # One projection for q, k and v: a single matmul instead of three.
            self.qkv = nn.Linear(hidden, 3 * hidden)
        else:
            # Decoupled (DARE): queries and keys from their own input and width, values from x.
            self.qk = nn.Linear(attention_width, 2 * attention_width)
            self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor, mask: Tensor | None, last_only: bool = False, query: Tensor | None = None,
                attention_input: Tensor | None = None) -> Tensor:
        """x: [batch, seq_len, hidden]; mask: from `attention_bias` (or any mask SDPA takes), or None for plain
        causal attention (query i sees keys <= i; exact only where no real query has a padding key before
        it, i.e. right padding). Returns [batch, seq_len, hidden], or
        [batch, 1, hidden] with `last_only`: only the last position queries (all positions are still keys),
        which is all a user vector needs from the top block. `query` (same shape as x), if given, is what
        the queries are projected from, x giving keys and values (SASRec's reference block). With an
        `attention_width`, `attention_input` ([batch, seq_len, attention_width]) gives queries and keys and x
        the values alone (`query` is then not read)."""
        if self.attention_width is not None:
            return self._decoupled(x, mask, last_only, attention_input)
        if mask is None and last_only:
            raise ValueError("last_only needs an explicit mask: the last query of plain causal attention is not "
                             "the last real item of a right-padded batch")
        batch, seq_len, hidden = x.shape
        head_dim = hidden // self.n_heads
        if query is None and not last_only:
            qkv = self.qkv(x).view(batch, seq_len, 3, self.n_heads, head_dim)  # [batch, seq_len, 3, heads, head_dim]
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq_len, head_dim]
        else:
            # Queries and keys/values projected apart: from different inputs (`query`), or, with last_only,
            # only the last position's query, which saves a third of the top block's projection.
            weight, bias = self.qkv.weight, self.qkv.bias
            query = x if query is None else query
            if last_only:
                query, mask = query[:, -1:], mask[..., -1:, :]  # type: ignore[index]  # [batch, 1, hidden], [batch, 1, 1, seq_len]
            q = F.linear(query, weight[:hidden], bias[:hidden])  # [batch, q_len, hidden]
            q = q.view(batch, -1, self.n_heads, head_dim).transpose(1, 2)  # [batch, heads, q_len, head_dim]
            kv = F.linear(x, weight[hidden:], bias[hidden:]).view(batch, seq_len, 2, self.n_heads, head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq_len, head_dim]
        q_len = q.shape[2]
        # Dropout on attention weights forces torch's unfused "math" attention: on CPU that is >10x
        # slower than the fused kernel, which is why models default it to 0 (see their configs).
        # is_causal without a mask: no [batch, 1, seq_len, seq_len] bias to build and for the kernel to read.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=mask is None
        )  # [batch, heads, seq_len, head_dim]
        y = y.transpose(1, 2).reshape(batch, q_len, hidden)  # [batch, q_len, hidden]
        return self.out(y)

    def _decoupled(self, x: Tensor, mask: Tensor | None, last_only: bool, attention_input: Tensor | None) -> Tensor:
        """`forward` with queries and keys projected from `attention_input`, values from x."""
        if attention_input is None or attention_input.shape[:2] != x.shape[:2]:
            raise ValueError("decoupled attention needs attention_input [batch, seq_len, attention_width] beside x")
        if mask is None and last_only:
            raise ValueError("last_only needs an explicit mask (see forward)")
        batch, seq_len, hidden = x.shape
        width = self.qk.in_features  # the attention width
        weight, bias = self.qk.weight, self.qk.bias
        queries = attention_input[:, -1:] if last_only else attention_input
        if last_only:
            mask = mask[..., -1:, :]  # type: ignore[index]
        q = F.linear(queries, weight[:width], bias[:width]).view(batch, -1, self.n_heads, width // self.n_heads)
        k = F.linear(attention_input, weight[width:], bias[width:]).view(batch, seq_len, self.n_heads, -1)
        v = self.v(x).view(batch, seq_len, self.n_heads, hidden // self.n_heads)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, heads, len, head width]
        # The scale is 1/sqrt(query width), the scores' own; values may be wider (SDPA allows it).
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=mask is None
        )  # [batch, heads, q_len, hidden / heads]
        return self.out(y.transpose(1, 2).reshape(batch, q.shape[2], hidden))


class FeedForward(nn.Module):
    """Point-wise feed-forward: the same two-layer MLP applied to every position."""

    def __init__(self, hidden: int, inner: int, dropout: float, activation: Activation) -> None:
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.act: nn.Module = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: [batch, seq_len, hidden] -> [batch, seq_len, hidden]."""
        return self.fc2(self.dropout(self.act(self.fc1(x))))  # [batch, seq_len, inner] in between


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each in a residual branch with dropout and layer norm.

    layer_norm="pre" normalises each branch's input, x + f(LN(x)) (GPT-2 style; stable without warm-up); the
    stack then needs one final LayerNorm, which the model owns. "post" normalises after the residual sum,
    LN(x + f(x)) (the original Transformer and BERT4Rec). "sasrec" is the block of SASRec's reference code
    (kang205/SASRec, pmixer/SASRec.pytorch, and Klenitskiy & Vasilev's SASRec+): the residual carries the
    NORMALISED input, and only the queries are normalised, keys and values coming from the raw input:
    q = LN1(x); x = q + Attn(q, x, x); x = LN2(x); x = x + FFN(x). It also needs the final LayerNorm.
    """

    def __init__(
        self,
        hidden: int,
        n_heads: int,
        inner: int,
        dropout: float,
        activation: Activation = "gelu",
        layer_norm: LayerNormPlacement = "pre",
        attention_dropout: float | None = None,
        attention_width: int | None = None,
    ) -> None:
        super().__init__()
        if layer_norm not in ("pre", "post", "sasrec"):
            raise ValueError(f"layer_norm must be 'pre', 'post' or 'sasrec', got {layer_norm!r}")
        self.layer_norm = layer_norm
        self.attn = SelfAttention(hidden, n_heads, dropout if attention_dropout is None else attention_dropout,
                                  attention_width)
        self.ffn = FeedForward(hidden, inner, dropout, activation)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, last_only: bool = False,
                attention_input: Tensor | None = None) -> Tensor:
        """x: [batch, seq_len, hidden]; mask: as `SelfAttention` takes it; attention_input: what a decoupled
        attention (built with `attention_width`) takes its queries and keys from. Returns
        [batch, seq_len, hidden], or only the last position's state [batch, 1, hidden] with `last_only` (same
        values, less work)."""
        residual = x[:, -1:] if last_only else x
        a = attention_input
        if self.layer_norm == "pre":
            x = residual + self.dropout(self.attn(self.norm1(x), mask, last_only, attention_input=a))
            return x + self.dropout(self.ffn(self.norm2(x)))
        if self.layer_norm == "sasrec":
            query = self.norm1(x)
            x = (query[:, -1:] if last_only else query) + self.dropout(
                self.attn(x, mask, last_only, query=query, attention_input=a))
            x = self.norm2(x)
            return x + self.dropout(self.ffn(x))
        x = self.norm1(residual + self.dropout(self.attn(x, mask, last_only, attention_input=a)))
        return self.norm2(x + self.dropout(self.ffn(x)))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-style init, for `model.apply`: N(0, std) weights, zero biases, unit LayerNorms.

    torch's default N(0, 1) embeddings, scaled by sqrt(hidden) as SASRec does, would start the logits far
    too large. The padding row of an embedding with `padding_idx` is zeroed again after the draw.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def positions_from_first_item(padding: Tensor) -> Tensor:
    """1, 2, ... counted from each sequence's first real item, 0 at padding: [batch, seq_len] bool -> long.

    Counting from the first real item (not from the left edge of the tensor) makes the states the same
    however much left padding a batch adds, and keeps causality: position t's index depends only on
    positions <= t. Every model with learnt positions uses it.
    """
    real = (~padding).long()  # [batch, seq_len]
    return real.cumsum(dim=1) * real
