"""Mamba: a causal selective state-space backbone for next-item prediction (Mamba4Rec).

Papers: Albert Gu and Tri Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023
(arXiv:2312.00752), for the block; Chengkai Liu et al., "Mamba4Rec: Towards Efficient Sequential
Recommendation with Selective State Space Models", 2024 (arXiv:2403.03900), for the recommender around it.
Kept from Mamba4Rec (chengkai-liu/Mamba4Rec, read to learn, not copied): item embeddings, dropout, then a
LayerNorm (eps 1e-12), no position embeddings (the recurrence orders the items); each layer is a Mamba block,
dropout and a LayerNorm (with the residual only when there are several layers), then a position-wise
feed-forward (4x wider, GELU) in a residual branch with its own LayerNorm; the tied item table scores; its
ML-1M hyperparameters (hidden 64, 1 layer, d_state 32, d_conv 4, expand 2, dropout 0.2, max_len 200) are the
defaults. Its init (N(0, 0.02) Linear weights, zero biases: `layers.init_weights`) also zeroes the step
size's bias, so every channel starts with dt = softplus(0) = 0.69 rather than Mamba's log-uniform
[0.001, 0.1]: we keep Mamba4Rec's, the one its reported numbers were trained with.

The Mamba block (Gu & Dao, Sec. 3): x, z = in_proj(h); x = SiLU(causal depthwise conv(x)); from x come a
per-position step dt (through a low-rank projection and softplus) and the input and output maps B, C; the
selective scan runs, per channel d and state n,

    s_t = exp(dt_t A) * s_{t-1} + dt_t B_t x_t,      y_t = C_t . s_t + D x_t,

and out_proj(y * SiLU(z)) is the block's output. A = -exp(A_log) < 0, so every step decays the state.

The scan here is pure PyTorch (no `mamba-ssm` CUDA kernels: their fused scan needs a GPU and a compiled
package, and this toolkit trains on CPU). `selective_scan` walks the sequence in chunks of `SCAN_CHUNK`
positions. During training each chunk is checkpointed: its [batch, chunk, inner, d_state] states are
recomputed in the backward pass instead of kept, so memory grows with the sequence only by one
[batch, inner, d_state] state per chunk (kept states would cost 16 KB per position per row at the
defaults, 4 GB per layer for a batch of 128 histories of 2,000 items). Inside a chunk the steps run one
position at a time by default; the log-depth (Hillis-Steele) scan, log2(chunk) tensor operations per
chunk, is there too (`doubling=True`) but measured 5x slower on 2 CPU cores (batch 64, 200 positions,
inner 128, d_state 32: 4.4 s forward and backward against 0.54 s), because it reads the whole chunk's
states log2(chunk) times while the loop touches each once with a state that stays in the cache.
`selective_scan_reference` is the plain loop over all positions that tests compare both with.

Padding: inputs are left-padded. The block zeroes its input and its scan input at padding positions, so the
state is exactly zero until the first real item: real positions' states do not depend on how much padding
precedes them (up to float rounding), as SASRec's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from recsys.config import ConfigModel, Positive, Rate
from recsys.models.base import Objective, SequenceModel
from recsys.models.layers import Dropout, init_weights
from recsys.models.losses import LossConfig

NORM_EPS = 1e-12
"""LayerNorm epsilon (Mamba4Rec's)."""
SCAN_CHUNK = 64
"""Positions per chunk of `selective_scan` (one checkpoint each while training): 64 measured faster than 32
on 2 cores and keeps a chunk's states for a batch of 128 near 130 MB."""


class MambaConfig(ConfigModel):
    """Hyperparameters of Mamba4Rec. The catalogue size (n_items) comes from the data, not from here."""

    max_len: Positive = 200
    """Longest history the model reads; longer ones keep their most recent max_len items. Time and memory
    grow linearly with it (no position table: nothing else depends on it)."""
    hidden: Positive = 64
    """Width of item embeddings and hidden states (Mamba4Rec: 64)."""
    n_layers: Positive = 1
    """Number of Mamba layers (Mamba4Rec: 1 on ML-1M). With one, the block has no residual around it."""
    d_state: Positive = 32
    """State size per channel, N (Mamba4Rec: 32)."""
    d_conv: Positive = 4
    """Width of the causal depthwise convolution before the scan (Mamba: 4)."""
    expand: Positive = 2
    """Inner width of the block = expand * hidden (Mamba: 2)."""
    dt_rank: Positive | None = None
    """Rank of the step-size projection; None: ceil(hidden / 16), Mamba's default."""
    ffn_mult: Positive = 4
    """Feed-forward inner size = ffn_mult * hidden (Mamba4Rec: 4)."""
    dropout: Rate = 0.2
    """Dropout on the embeddings, each block's output and the feed-forward (Mamba4Rec: 0.2 on ML-1M, 0.4 on
    the sparser Amazon sets)."""
    loss: LossConfig = LossConfig()
    """Training loss and its options (recsys.models.losses): full softmax 'ce' by default (Mamba4Rec's)."""


def selective_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The selective scan as a plain loop over positions (the definition; tests compare `selective_scan`
    with it).

    x, dt: [batch, seq_len, inner]; A: [inner, d_state]; B, C: [batch, seq_len, d_state]. Returns y
    [batch, seq_len, inner], y_t = C_t . s_t with s_t = exp(dt_t A) s_{t-1} + dt_t B_t x_t and s_{-1} = 0.
    """
    return _loop_chunk(x.new_zeros(x.shape[0], x.shape[2], A.shape[1]), x, dt, A, B, C)[0]


def _loop_chunk(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The scan over a chunk one position at a time from `state` ([batch, inner, d_state], the state before
    the chunk): returns (y [batch, chunk, inner], the state after it)."""
    ys = []
    for t in range(x.shape[1]):
        state = torch.exp(dt[:, t, :, None] * A) * state + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((state @ C[:, t, :, None]).squeeze(-1))  # [batch, inner]
    return torch.stack(ys, dim=1), state


def _doubling_chunk(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """`_loop_chunk`'s result with log2(chunk) tensor operations instead of one per position.

    Each step is the affine map s -> a_t s + b_t; composing them is associative, so after k doubling
    rounds position t holds the composition of steps t-2^k+1..t: log2(chunk) rounds give every prefix.
    All the a_t are in (0, 1], so the products only shrink: no overflow, unlike a cumulative-sum form
    that divides by the decay so far.
    """
    decay = torch.exp(dt.unsqueeze(-1) * A)  # [batch, chunk, inner, d_state]
    step = (dt * x).unsqueeze(-1) * B.unsqueeze(2)  # [batch, chunk, inner, d_state]
    # The carried state enters as part of the first step's input.
    step = torch.cat([step[:, :1] + decay[:, :1] * state.unsqueeze(1), step[:, 1:]], dim=1)
    length, shift = x.shape[1], 1
    while shift < length:
        step = torch.cat([step[:, :shift], step[:, shift:] + decay[:, shift:] * step[:, :-shift]], dim=1)
        if shift * 2 < length:  # the decays of the last round are not needed
            decay = torch.cat([decay[:, :shift], decay[:, shift:] * decay[:, :-shift]], dim=1)
        shift *= 2
    y = (step @ C.unsqueeze(-1)).squeeze(-1)  # [batch, chunk, inner]
    return y, step[:, -1]


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int = SCAN_CHUNK,
                   doubling: bool = False) -> Tensor:
    """The selective scan, chunked (see the module docstring); same shapes and values as
    `selective_scan_reference` up to float rounding. Inside a chunk: one step per position, or with
    `doubling` the log-depth scan (`_doubling_chunk`). While gradients are recorded each chunk is
    checkpointed, so only the state between chunks is kept for the backward pass."""
    batch, seq_len, inner = x.shape
    run_chunk = _doubling_chunk if doubling else _loop_chunk
    state = x.new_zeros(batch, inner, A.shape[1])  # [batch, inner, d_state]
    keep_less = torch.is_grad_enabled() and any(t.requires_grad for t in (x, dt, A, B, C))
    ys = []
    for start in range(0, seq_len, chunk):
        part = (state, x[:, start:start + chunk], dt[:, start:start + chunk], A, B[:, start:start + chunk],
                C[:, start:start + chunk])
        if keep_less:
            y, state = checkpoint(run_chunk, *part, use_reentrant=False)
        else:
            y, state = run_chunk(*part)
        ys.append(y)
    return torch.cat(ys, dim=1)


class MambaMixer(nn.Module):
    """The Mamba block (Gu & Dao): gated, causal, selective state-space mixing over the sequence."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        inner = config.expand * config.hidden
        self.d_state = config.d_state
        self.dt_rank = config.dt_rank or math.ceil(config.hidden / 16)
        self.in_proj = nn.Linear(config.hidden, 2 * inner, bias=False)  # x and the gate z
        # Depthwise, padded on both sides and cut to the first seq_len outputs: output t reads inputs <= t.
        self.conv = nn.Conv1d(inner, inner, config.d_conv, groups=inner, padding=config.d_conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * config.d_state, bias=False)  # dt (low rank), B, C
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        # S4D-real init: A_n = -n for n = 1..d_state in every channel, stored as a log to stay negative.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, config.d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))  # the skip connection past the scan
        self.out_proj = nn.Linear(inner, config.hidden, bias=False)

    def forward(self, h: Tensor, keep: Tensor) -> Tensor:
        """h: [batch, seq_len, hidden]; keep: [batch, seq_len, 1], 1 at real items and 0 at padding.
        Returns [batch, seq_len, hidden]; position t depends only on positions <= t."""
        seq_len = h.shape[1]
        x, z = self.in_proj(h * keep).chunk(2, dim=-1)  # each [batch, seq_len, inner]
        x = self.conv(x.transpose(1, 2))[..., :seq_len].transpose(1, 2)
        # Zero at padding: the conv's bias would otherwise feed the state before the first real item.
        x = F.silu(x) * keep
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # [batch, seq_len, inner], > 0
        y = selective_scan(x, dt, -torch.exp(self.A_log), B, C) + x * self.D
        return self.out_proj(y * F.silu(z))


class MambaLayer(nn.Module):
    """A Mamba block then a position-wise feed-forward, as Mamba4Rec's layer."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.residual = config.n_layers > 1  # Mamba4Rec's single layer has no residual around the block
        self.mixer = MambaMixer(config)
        self.norm = nn.LayerNorm(config.hidden, eps=NORM_EPS)
        self.fc1 = nn.Linear(config.hidden, config.ffn_mult * config.hidden)
        self.fc2 = nn.Linear(config.ffn_mult * config.hidden, config.hidden)
        self.ffn_norm = nn.LayerNorm(config.hidden, eps=NORM_EPS)
        self.dropout = Dropout(config.dropout)

    def forward(self, h: Tensor, keep: Tensor) -> Tensor:
        """[batch, seq_len, hidden] -> [batch, seq_len, hidden]; keep as `MambaMixer` takes it."""
        mixed = self.dropout(self.mixer(h, keep))
        h = self.norm(mixed + h if self.residual else mixed)
        return self.ffn_norm(h + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(h))))))


class Mamba(SequenceModel):
    """Mamba4Rec: Mamba layers over item embeddings with a tied item output layer (contract:
    recsys.models.base)."""

    config: MambaConfig

    def __init__(self, n_items: int, config: MambaConfig) -> None:
        super().__init__(n_items, config)
        self.item_emb = nn.Embedding(n_items + 1, config.hidden, padding_idx=0)
        self.emb_dropout = Dropout(config.dropout)
        self.emb_norm = nn.LayerNorm(config.hidden, eps=NORM_EPS)
        self.layers = nn.ModuleList(MambaLayer(config) for _ in range(config.n_layers))
        self.apply(init_weights)

    def objective(self) -> Objective:
        return Objective("shift", loss=self.config.loss)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """Hidden state at every position: [batch, seq_len] -> [batch, seq_len, hidden]; the state at
        position t depends only on items[:, :t+1]. States at padding positions are finite but meaningless."""
        self.check_history(items, timestamps)
        keep = (items != 0).unsqueeze(-1).to(self.item_emb.weight.dtype)  # [batch, seq_len, 1]
        h = self.emb_norm(self.emb_dropout(self.item_emb(items)))  # [batch, seq_len, hidden]
        for layer in self.layers:
            h = layer(h, keep)
        return h

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """The last position's state: [batch, seq_len] history -> [batch, hidden] query for the next item.
        A history of only padding gives a finite vector (a cold-start query)."""
        return self.encode(items, timestamps)[:, -1]

    def item_vectors(self) -> Tensor:
        """The tied item embedding table [n_items + 1, hidden]; row 0 is padding (all zeros)."""
        return self.item_emb.weight
