"""HSTU: pointwise (SiLU) causal attention with relative position and time-gap biases, for next-item prediction.

Paper: Jiaqi Zhai et al., "Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for
Generative Recommendations", ICML 2024 (arXiv:2402.17152). This is the paper's "traditional sequential
recommender" setting (its Section 4.1.1, the public-dataset tables): a stack of HSTU blocks over a user's
item sequence, trained like SASRec with the "shift" objective. Each block is

    U, V, Q, K = SiLU(Linear(Norm(x)))                      one projection, then split
    A = SiLU(Q K^T + rab_p(i - j) + rab_t(gap(i, j))) / n   pointwise weights, causal, padding keys 0
    x = x + Linear(Dropout(Norm(A V) * U))

Kept from the paper and its reference code (meta-recsys/generative-recommenders, research/modeling/
sequential/hstu.py; read to learn, not copied): the single U/V/Q/K projection with SiLU and no bias;
per-head attention and value widths independent of `hidden`; parameter-free LayerNorms before the
projection and over the whole A V (all heads together); no softmax and no 1/sqrt(d) scale; per-block learnt
bias tables; the time gap bucketed as floor(ln(max(|gap|, 1 s)) / 0.301), clipped to 128 buckets; gaps
measured from the time the query is asked, which in training is the NEXT item's timestamp; and the input
layer the reference uses with HSTU (item embeddings scaled by sqrt(hidden), plus learnt absolute positions,
dropout, padding zeroed), so that HSTU and SASRec here differ in their blocks only.

What differs, and why:
- n, the attention's divisor, is `max_len`: a constant, as in the reference (which divides by its padded
  length, a constant). Dividing by the tensor's width would make states depend on the amount of left
  padding; dividing by the number of real items would let later items change earlier states (breaking
  causality); a per-query count of the keys it sees would turn the sum into a mean and lose what the paper
  keeps on purpose, how much history there is. The LayerNorm over A V then rescales each state anyway.
- The position bias is indexed by the distance i - j >= 0 alone (a causal query never sees j > i), so it
  has `max_len` entries rather than the reference's 2 * max_len - 1; with left padding and real items
  contiguous, the tensor distance is the distance in real items, whatever the padding.
- The time gap is `query_time[i] - timestamp[j]` with query_time an input (`query_times`, or `at` for a
  user vector) instead of always the next position's timestamp: the reference writes the target's
  timestamp after the history, in training and in evaluation alike, which is what `query_times` (training)
  and `at` (asking at a given time) say here. Without them the next timestamp in the history is used, and
  the last position's own timestamp (no time beyond the history is known).
- Output: the tied item table with a plain dot product and a final LayerNorm (the reference's other
  `user_embedding_norm`, and SASRec's here), because the contract scores items by an inner product that
  FAISS can index; the reference's MovieLens configs L2-normalise queries and items and divide by a
  temperature of 0.05 (a cosine similarity) and train with 128 sampled negatives.
  Losses are the shared ones (`recsys.models.losses`, chosen by `loss` as for SASRec).
- Weights start as `layers.init_weights` makes them (N(0, 0.02)); the reference's output projection is
  Xavier-uniform. The reference's attention dropout is a parameter its attention does not use: left out.
- Dense left-padded tensors, no jagged kernels, no K/V cache (the paper's efficiency work is GPU-specific).

Timestamps are seconds, 0 at padding; gaps are taken in float64, since float32 cannot hold today's Unix
times to the second. With `timestamps` None the time bias is skipped: the model runs exactly as with
`time_bias=False` and the same weights (nothing changes for callers that send item ids only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive, PositiveFloat, Rate
from recsys.models.base import Objective, SequenceModel
from recsys.models.layers import Dropout, init_weights, positions_from_first_item
from recsys.models.losses import LossConfig

NORM_EPS = 1e-6
"""LayerNorm epsilon of the blocks (the reference's)."""


class HSTUConfig(ConfigModel):
    """Hyperparameters of HSTU. The catalogue size (n_items) comes from the data, not from here."""

    max_len: Positive = 200
    """Longest history the model reads; longer ones keep their most recent max_len items. Also the
    attention's divisor n (see the module docstring) and the size of the position bias table."""
    hidden: Positive = 64
    """Width of item embeddings and hidden states (the paper uses 50 on MovieLens; a multiple of 8 is faster
    on GPUs)."""
    n_layers: Positive = 2
    """Number of HSTU blocks (paper: 2 for HSTU, 8 for HSTU-large on MovieLens)."""
    n_heads: Positive = 1
    """Attention heads per block (paper: 1 for HSTU, 2 for HSTU-large on MovieLens)."""
    attention_dim: Positive = 64
    """Width of Q and K per head (the paper's d_qk; its MovieLens runs use hidden / n_heads)."""
    linear_dim: Positive = 64
    """Width of U and V per head (the paper's d_v); the blocks' output projection maps n_heads * linear_dim
    back to hidden."""
    dropout: Rate = 0.2
    """Dropout on the input embeddings and on each block's Norm(A V) * U before its output projection
    (the reference's dropout_rate and linear_dropout_rate, both 0.2)."""
    time_bias: bool = True
    """Add a learnt bias by the bucketed time gap between when a query is asked and each history item
    (rab_t). False: timestamps are ignored (the paper's ablation)."""
    position_bias: bool = True
    """Add a learnt bias by the distance i - j between query and history positions (rab_p). False: order
    reaches the blocks only through the absolute position embeddings (the paper's ablation)."""
    n_time_buckets: Positive = 128
    """Time gaps fall in buckets 0..n_time_buckets; longer gaps share the last (the reference's 128)."""
    time_bucket_width: PositiveFloat = 0.301
    """Width of a time bucket in natural-log seconds: bucket = floor(ln(max(|gap|, 1 s)) / width). The
    reference's 0.301 makes each bucket a factor e^0.301 = 1.35 wider than the one before (2.3 per doubling):
    0 and 1 s give bucket 0, 1 minute 13, 1 hour 27, 1 day 37, 1 week 44, 365 days 57, 30 years 68; so
    with 128 buckets (the reference's pair) the last ~60 are never reached by real gaps."""
    loss: LossConfig = LossConfig()
    """Training loss and its options (recsys.models.losses): full softmax 'ce' by default, sampled softmax,
    the paper's BCE, or gSASRec's 'gbce'."""


def bucket_time_gaps(gaps: Tensor, n_buckets: int = 128, width: float = 0.301) -> Tensor:
    """Time gaps in seconds -> bucket ids floor(ln(max(|gap|, 1)) / width), clipped to n_buckets (LongTensor,
    same shape). A negative gap (a query asked before the item, e.g. clock skew) counts by its size, as in
    the reference. Taken in float64 so that gaps between today's Unix times are exact."""
    gaps = gaps.to(torch.float64).abs().clamp_(min=1.0)
    return (gaps.log_() / width).floor_().long().clamp_(max=n_buckets)


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """table[index] for a 1-d table, as a gather: its backward is a scatter-add, ~7x faster on CPU than the
    accumulating index_put that `table[index]` backs into (a [batch, seq_len, seq_len] index into 129 slots
    cost a fifth of a training step)."""
    return table.gather(0, index.reshape(-1)).view(index.shape)


class HSTUBlock(nn.Module):
    """One HSTU layer (see the module docstring) with its own relative attention bias tables."""

    def __init__(self, config: HSTUConfig) -> None:
        super().__init__()
        self.n_heads, self.attention_dim, self.linear_dim = config.n_heads, config.attention_dim, config.linear_dim
        self.query_width = config.n_heads * (config.linear_dim + config.attention_dim)  # U and Q
        # One projection, ordered [U, Q | V, K]: with last_only the first half is computed for the last
        # position alone and the second (keys and values) for all.
        self.uqvk = nn.Linear(config.hidden, 2 * self.query_width, bias=False)
        self.out = nn.Linear(config.n_heads * config.linear_dim, config.hidden)
        self.dropout = Dropout(config.dropout)
        # Small random starts, as the reference: a zero table would give every gap the same gradient.
        self.position_weight = nn.Parameter(torch.randn(config.max_len) * 0.02) if config.position_bias else None
        self.time_weight = nn.Parameter(torch.randn(config.n_time_buckets + 1) * 0.02) if config.time_bias else None

    def forward(self, x: Tensor, weight_mask: Tensor, distance: Tensor, buckets: Tensor | None,
                last_only: bool = False) -> Tensor:
        """x: [batch, seq_len, hidden]; weight_mask: [batch, 1, q_len, seq_len], 1 / n where query i may read
        key j, else 0; distance: [q_len, seq_len] i - j (clipped at 0); buckets: [batch, q_len, seq_len] time
        buckets, or None (no time bias). q_len is seq_len, or 1 with `last_only` (only the last position
        queries). Returns [batch, q_len, hidden]."""
        batch, seq_len, hidden = x.shape
        normed = F.layer_norm(x, (hidden,), eps=NORM_EPS)
        weight = self.uqvk.weight
        if last_only:
            uq = F.silu(F.linear(normed[:, -1:], weight[:self.query_width]))  # [batch, 1, heads * (dv + dqk)]
            vk = F.silu(F.linear(normed, weight[self.query_width:]))  # [batch, seq_len, heads * (dv + dqk)]
        else:
            uq, vk = F.silu(F.linear(normed, weight)).split(self.query_width, dim=-1)
        u, q = uq.split([self.n_heads * self.linear_dim, self.n_heads * self.attention_dim], dim=-1)
        v, k = vk.split([self.n_heads * self.linear_dim, self.n_heads * self.attention_dim], dim=-1)
        q_len = q.shape[1]
        q = q.view(batch, q_len, self.n_heads, self.attention_dim).transpose(1, 2)  # [batch, heads, q_len, dqk]
        k = k.view(batch, seq_len, self.n_heads, self.attention_dim).transpose(1, 2)  # [batch, heads, seq_len, dqk]
        v = v.view(batch, seq_len, self.n_heads, self.linear_dim).transpose(1, 2)  # [batch, heads, seq_len, dv]

        scores = q @ k.transpose(-1, -2)  # [batch, heads, q_len, seq_len]
        if self.position_weight is not None:
            scores = scores + lookup(self.position_weight, distance)  # [q_len, seq_len], shared by the batch
        if self.time_weight is not None and buckets is not None:
            scores = scores + lookup(self.time_weight, buckets).unsqueeze(1)  # [batch, 1, q_len, seq_len]
        # Pointwise, not softmax: the mask multiplies (a fully masked row, e.g. a padding query, gives 0
        # rather than softmax's NaN), and 1/n is folded into it.
        attended = (F.silu(scores) * weight_mask) @ v  # [batch, heads, q_len, dv]
        attended = attended.transpose(1, 2).reshape(batch, q_len, self.n_heads * self.linear_dim)
        gated = F.layer_norm(attended, attended.shape[-1:], eps=NORM_EPS) * u  # [batch, q_len, heads * dv]
        residual = x[:, -1:] if last_only else x
        return residual + self.out(self.dropout(gated))


class HSTU(SequenceModel):
    """HSTU blocks over item embeddings, with a tied item output layer (contract: recsys.models.base)."""

    config: HSTUConfig
    uses_timestamps = True

    def __init__(self, n_items: int, config: HSTUConfig) -> None:
        super().__init__(n_items, config)
        hidden = config.hidden
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        # Position 0 is padding; real items get 1..max_len, counted from the first real item (`positions_from_first_item`).
        self.pos_emb = nn.Embedding(config.max_len + 1, hidden, padding_idx=0)
        self.emb_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(HSTUBlock(config) for _ in range(config.n_layers))
        # The residual stream is never normalised inside the stack (each block normalises its own input);
        # the dot-product logits want it bounded.
        self.final_norm = nn.LayerNorm(hidden)
        self.apply(init_weights)

    def objective(self) -> Objective:
        cfg = self.config
        return Objective("shift", loss=cfg.loss)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """Hidden state at every position: [batch, seq_len] -> [batch, seq_len, hidden].

        The state at position t depends only on items[:, :t+1], timestamps[:, :t+1] and query_times[:, t]
        (when it is asked: in training, the target's timestamp). Without `query_times`, position t is asked
        at timestamps[:, t+1] (the next item's time, known in the history) and the last position at its own
        timestamp. States at padding positions are finite but meaningless.
        """
        self.check_history(items, timestamps)
        if query_times is not None:
            if timestamps is None:
                raise ValueError("query_times without timestamps: the time gaps need the history's timestamps")
            if query_times.shape != items.shape:
                raise ValueError(f"query_times must have the items' shape {tuple(items.shape)}, got "
                                 f"{tuple(query_times.shape)}")
        elif timestamps is not None:
            query_times = torch.cat([timestamps[:, 1:], timestamps[:, -1:]], dim=1)
        return self._run(items, timestamps, query_times, last_only=False)

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """The last position's state: [batch, seq_len] history -> [batch, hidden] query for the next item.

        `at` ([batch], seconds) is when the next item is asked for; None: at the last interaction's
        timestamp. Equals `encode(items, timestamps, query_times)[:, -1]` with query_times the next
        timestamps followed by `at`. The top block computes only the last position. A history of only
        padding gives a finite vector (a cold-start query).
        """
        self.check_history(items, timestamps)
        query_times = None
        if at is not None:
            if timestamps is None:
                raise ValueError("at without timestamps: the time gaps need the history's timestamps")
            if at.shape != items.shape[:1]:
                raise ValueError(f"at must be [batch] = {tuple(items.shape[:1])}, got {tuple(at.shape)}")
            # float64: `at` may come as another dtype than the history, and float32 would round Unix times
            query_times = torch.cat([timestamps[:, 1:].to(torch.float64), at.to(torch.float64).unsqueeze(1)], dim=1)
        elif timestamps is not None:
            query_times = torch.cat([timestamps[:, 1:], timestamps[:, -1:]], dim=1)
        return self._run(items, timestamps, query_times, last_only=True)[:, -1]

    def item_vectors(self) -> Tensor:
        """The tied item embedding table [n_items + 1, hidden]; row 0 is padding (all zeros)."""
        return self.item_emb.weight

    def _run(self, items: Tensor, timestamps: Tensor | None, query_times: Tensor | None, last_only: bool) -> Tensor:
        """The stack: [batch, seq_len] -> [batch, seq_len, hidden], or [batch, 1, hidden] with `last_only`."""
        padding = items == 0  # [batch, seq_len]
        seq_len = items.shape[1]
        x = self._embed(items, padding)  # [batch, seq_len, hidden]
        steps = torch.arange(seq_len, device=items.device)
        causal = steps[:, None] >= steps[None, :]  # [seq_len, seq_len]: key j <= query i
        # 1/n where query i may read key j (causal, key real), else 0: one multiplication per block.
        allowed = causal & ~padding[:, None, None, :]  # [batch, 1, seq_len, seq_len]
        weight_mask = allowed.to(x.dtype) / self.config.max_len
        distance = (steps[:, None] - steps[None, :]).clamp_(min=0)  # [seq_len, seq_len]
        buckets = None
        if self.config.time_bias and timestamps is not None and query_times is not None:
            gaps = query_times.to(torch.float64)[:, :, None] - timestamps.to(torch.float64)[:, None, :]
            buckets = bucket_time_gaps(gaps, self.config.n_time_buckets, self.config.time_bucket_width)
        for depth, block in enumerate(self.blocks):
            if last_only and depth == len(self.blocks) - 1:
                x = block(x, weight_mask[:, :, -1:], distance[-1:], None if buckets is None else buckets[:, -1:],
                          last_only=True)
            else:
                x = block(x, weight_mask, distance, buckets)
        return self.final_norm(x)

    def _embed(self, items: Tensor, padding: Tensor) -> Tensor:
        """Scaled item embeddings plus positions, padding zeroed: [batch, seq_len] -> [batch, seq_len, hidden]."""
        x = self.item_emb(items) * math.sqrt(self.config.hidden)  # [batch, seq_len, hidden]
        x = x + self.pos_emb(positions_from_first_item(padding))
        return self.emb_dropout(x) * (~padding).unsqueeze(-1)  # padding positions are zero vectors
