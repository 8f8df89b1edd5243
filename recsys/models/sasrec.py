"""SASRec: a causal transformer over a user's item sequence that predicts the next item.

Paper: Wang-Cheng Kang and Julian McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018
(arXiv:1808.09781). Kept from the reference code (kang205/SASRec, pmixer/SASRec.pytorch): item id 0 is
padding, sequences are left-padded, item embeddings are scaled by sqrt(hidden), padding positions are
zeroed, and a final LayerNorm follows the stack. The output layer is the item embedding table itself (tied),
so a user vector and the item vectors live in one space: that is what lets retrieval put the items in a
FAISS inner-product index and query it with `user_vector`.

The loss is not computed here: `SASRecConfig.loss` names one of `recsys.models.losses` with its options,
which training applies to `encode`'s states and `item_vectors()`. Original SASRec is `loss: bce`; the default
full softmax "ce" follows Klenitskiy & Vasilev (RecSys 2023), and "gbce" is gSASRec (Petrov & Macdonald, 2023).

Decoupled embeddings (`attention_hidden`): DARE (Feng et al., "Long-Sequence Recommendation Models Need
Decoupled Embeddings", arXiv:2410.02604) gives attention its own item table, because one table that both
decides which history items to look at and says what they are gets gradients pulling two ways. Here every
block's queries and keys are projected from a second, possibly narrower, item table (with its own
positions, scaled, dropped and padding-zeroed like the first), the values and the residual stream from
the representation table, which alone scores items (tied output). DARE applies this to target attention
over a history (DIN/TWIN); across a self-attention stack the attention input is the same embedding at
every block, not a state that the blocks update: the attention table stays a pure "which items" signal.
A narrower table makes the attention scores cheaper (their cost is seq_len^2 * attention_hidden).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import model_validator
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive, Rate
from recsys.models.base import Objective, SequenceModel
from recsys.models.layers import Dropout, TransformerBlock, attention_bias, init_weights, positions_from_first_item
from recsys.models.losses import LossConfig


class SASRecConfig(ConfigModel):
    """Hyperparameters of SASRec. The catalogue size (n_items) comes from the data, not from here."""

    max_len: Positive = 200
    """Longest history the model reads; longer ones keep their most recent max_len items."""
    hidden: Positive = 64
    """Width of item embeddings and hidden states (the paper uses 50; a multiple of 8 is faster on GPUs)."""
    n_layers: Positive = 2
    """Number of transformer blocks."""
    n_heads: Positive = 1
    """Attention heads per block; hidden must be divisible by it (the paper uses 1)."""
    dropout: Rate = 0.2
    """Dropout on embeddings, attention weights and residual branches (paper: 0.2 for ML-1M, 0.5 for sparse data)."""
    attention_dropout: Rate = 0.0
    """Dropout on attention weights (the reference code uses `dropout` here too). Off by default: any
    attention dropout makes torch leave its fused attention kernel, which costs ~2x per epoch on CPU."""
    ffn_mult: Positive = 1
    """Feed-forward inner size = ffn_mult * hidden (the paper's point-wise FFN keeps the width: 1)."""
    layer_norm: Literal["pre", "post", "sasrec"] = "pre"
    """'pre': LayerNorm before each sub-layer plus a final one; 'post': after the residual sum; 'sasrec': the
    reference code's block (normalised queries and residual, raw keys and values; see layers.TransformerBlock)."""
    activation: Literal["gelu", "relu"] = "relu"
    """Feed-forward non-linearity (the paper: ReLU)."""
    attention_hidden: Positive | None = None
    """DARE's decoupled embeddings: width of a separate item table (and position table) that only the
    attention's queries and keys read; the `hidden` table gives values and scores items. None: one table
    for both, as SASRec. Must be divisible by n_heads; narrower than hidden makes attention cheaper."""
    loss: LossConfig = LossConfig()
    """Training loss and its options (recsys.models.losses): full softmax 'ce' by default, the paper's 'bce',
    sampled softmax, or gSASRec's 'gbce'."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> SASRecConfig:
        if self.hidden % self.n_heads != 0:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        if self.attention_hidden is not None and self.attention_hidden % self.n_heads != 0:
            raise ValueError(f"attention_hidden ({self.attention_hidden}) must be divisible by n_heads "
                             f"({self.n_heads})")
        return self


class SASRec(SequenceModel):
    """Causal self-attention sequence encoder with a tied item output layer (contract: recsys.models.base)."""

    config: SASRecConfig

    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__(n_items, config)
        hidden = config.hidden
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        # Position 0 is padding; real items get 1..max_len (see `layers.positions_from_first_item`).
        self.pos_emb = nn.Embedding(config.max_len + 1, hidden, padding_idx=0)
        self.emb_dropout = Dropout(config.dropout)
        # DARE: the attention's own tables (None without attention_hidden: then no new state-dict keys, and
        # models saved before the option load as they were).
        self.attention_emb: nn.Embedding | None = None
        self.attention_pos_emb: nn.Embedding | None = None
        if config.attention_hidden is not None:
            self.attention_emb = nn.Embedding(n_items + 1, config.attention_hidden, padding_idx=0)
            self.attention_pos_emb = nn.Embedding(config.max_len + 1, config.attention_hidden, padding_idx=0)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden,
                config.n_heads,
                config.ffn_mult * hidden,
                config.dropout,
                activation=config.activation,
                layer_norm=config.layer_norm,
                attention_dropout=config.attention_dropout,
                attention_width=config.attention_hidden,
            )
            for _ in range(config.n_layers)
        )
        # Post-LN blocks already end in a LayerNorm; a second one would only add parameters.
        self.final_norm: nn.Module = nn.LayerNorm(hidden) if config.layer_norm != "post" else nn.Identity()
        self.apply(init_weights)

    def objective(self) -> Objective:
        cfg = self.config
        return Objective("shift", loss=cfg.loss)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None, *,
               last_only: bool = False) -> Tensor:
        """Hidden state at every position; the state at position t depends only on items[:, :t+1].

        items: [batch, seq_len] LongTensor, left-padded with 0. Returns [batch, seq_len, hidden]; states at
        padding positions are finite but meaningless. With `last_only`, [batch, 1, hidden]: the top block
        computes only the last position (a third of its work), which is all inference needs.
        """
        self.check_history(items, timestamps)
        padding = items == 0  # [batch, seq_len]
        x = self._embed(items, padding)
        a = self._embed_attention(items, padding)  # [batch, seq_len, attention_hidden] or None
        mask = attention_bias(padding, causal=True, dtype=x.dtype)  # [batch, 1, seq_len, seq_len]
        for depth, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and depth == len(self.blocks) - 1, attention_input=a)
        return self.final_norm(x)  # [batch, seq_len or 1, hidden]

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """The state at the last position: [batch, seq_len] history -> [batch, hidden] query vector.

        With left padding the last position is the most recent item, so this is the model's prediction of
        what comes next. A history of only padding gives a finite vector (a cold-start query).
        """
        self.check_history(items, timestamps)
        padding = items == 0  # [batch, seq_len]
        seq_len = items.shape[1]
        lengths = (~padding).sum(dim=1, keepdim=True)  # [batch, 1]
        steps = torch.arange(seq_len, device=items.device)  # [seq_len]
        # The lower blocks see each history moved to the left edge (right padding): then no real query has a
        # padding key before it, so plain causal attention needs no padding mask, and no [batch, seq_len,
        # seq_len] bias is built and read (over all ml-1m users that cost a third as much as the attention
        # itself). Same states as `encode`, up to float rounding; positions count from the first real item
        # either way.
        front = items.gather(1, (steps + seq_len - lengths) % seq_len)  # [batch, seq_len], right-padded
        x = self._embed(front, front == 0)
        a = self._embed_attention(front, front == 0)
        for block in self.blocks[:-1]:
            x = block(x, None, attention_input=a)
        # Back to left padding for the top block, whose one query (the last item) masks the padding keys.
        back = ((steps + lengths) % seq_len).unsqueeze(-1)  # [batch, seq_len, 1]
        x = x.gather(1, back.expand(-1, -1, x.shape[-1]))
        a = None if a is None else a.gather(1, back.expand(-1, -1, a.shape[-1]))
        x = self.blocks[-1](x, attention_bias(padding, causal=False, dtype=x.dtype), last_only=True,
                            attention_input=a)
        return self.final_norm(x)[:, -1, :]  # [batch, hidden]

    def item_vectors(self) -> Tensor:
        """The tied item embedding table [n_items + 1, hidden]; row 0 is padding (all zeros)."""
        return self.item_emb.weight

    def _embed(self, items: Tensor, padding: Tensor) -> Tensor:
        """Scaled item embeddings plus positions, padding zeroed: [batch, seq_len] -> [batch, seq_len, hidden]."""
        x = self.item_emb(items) * math.sqrt(self.config.hidden)  # [batch, seq_len, hidden]
        x = x + self.pos_emb(positions_from_first_item(padding))
        return self.emb_dropout(x) * (~padding).unsqueeze(-1)  # padding positions are zero vectors

    def _embed_attention(self, items: Tensor, padding: Tensor) -> Tensor | None:
        """DARE's attention input, built as `_embed` from the attention tables: [batch, seq_len,
        attention_hidden]; None without `attention_hidden`."""
        if self.attention_emb is None or self.attention_pos_emb is None:
            return None
        a = self.attention_emb(items) * math.sqrt(self.attention_emb.embedding_dim)
        a = a + self.attention_pos_emb(positions_from_first_item(padding))
        return self.emb_dropout(a) * (~padding).unsqueeze(-1)
