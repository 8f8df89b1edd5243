"""BERT4Rec: a bidirectional transformer over a user's item sequence, trained to fill in masked items.

Paper: Fei Sun, Jun Liu, Jian Wu, Changhua Pei, Xiao Lin, Wenwu Ou and Peng Jiang, "BERT4Rec: Sequential
Recommendation with Bidirectional Encoder Representations from Transformer", CIKM 2019 (arXiv:1904.06690).

Kept from the paper and its reference code (FeiSun/BERT4Rec): every position attends to every other real
position (no causal mask), learned position embeddings, post-LN blocks with a GELU feed-forward 4x wide,
an embedding LayerNorm, and the output head GELU(h W + b) followed by a LayerNorm, then a dot product with
the item embedding table (tied). The paper's per-item output bias is an option (`output_bias`, off by
default): it rides in one extra dimension, 1 on the user side and the bias on the item side, so that
`score == user_vector @ item_vectors().T` still holds exactly and retrieval stays a FAISS inner product.

Cloze objective: the data hides items behind the [MASK] token (id n_items + 1, one extra embedding row)
and the loss is computed at the masked positions (`recsys.data.batches.mask_batch`, picked by its
`objective()`). The paper also trains on windows whose only masked item is the last one,
which is exactly the inference task; `last_item_mask_prob` sets their share. At inference a [MASK] is
appended after the history (the oldest item is dropped if the window is full) and its state is the user
vector. The loss is full softmax cross-entropy over the catalogue by default ("ce"), or sampled softmax.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive, Probability, Rate
from recsys.models.base import Objective, SequenceModel
from recsys.models.layers import Dropout, TransformerBlock, attention_bias, init_weights, positions_from_first_item
from recsys.models.losses import SoftmaxLossConfig
from recsys.models.prior import with_bias_column, with_unit_column


class BERT4RecConfig(ConfigModel):
    """Hyperparameters of BERT4Rec. The catalogue size (n_items) comes from the data, not from here."""

    max_len: Annotated[int, Field(ge=2)] = 200
    """Longest input the model reads, the appended [MASK] included, so at least 2 (paper: 200 for ML-1M)."""
    hidden: Positive = 64
    """Width of item embeddings and hidden states (paper: 64)."""
    n_layers: Positive = 2
    """Number of transformer blocks (paper: 2)."""
    n_heads: Positive = 2
    """Attention heads per block; hidden must be divisible by it (paper: 2)."""
    dropout: Rate = 0.1
    """Dropout on embeddings and residual branches (paper: 0.1)."""
    attention_dropout: Rate = 0.0
    """Dropout on attention weights (the paper uses `dropout` here too). Off by default, as for SASRec: any
    attention dropout makes torch leave its fused attention kernel, which costs ~2x per epoch on CPU."""
    ffn_mult: Positive = 4
    """Feed-forward inner size = ffn_mult * hidden (paper: 4, as in BERT)."""
    layer_norm: Literal["pre", "post"] = "post"
    """'post': LayerNorm after each residual sum (the paper, as BERT); 'pre': before each sub-layer, plus a
    final one (trains more stably with deeper stacks or larger learning rates)."""
    activation: Literal["gelu", "relu"] = "gelu"
    """Feed-forward and output-head non-linearity (paper: GELU)."""
    mask_prob: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Share of real items hidden behind [MASK] in each training window (paper: 0.2 for ML-1M)."""
    last_item_mask_prob: Probability = 0.1
    """Share of training windows whose only masked item is the last one (the paper's extra samples that match
    the inference task); 0 turns them off."""
    loss: SoftmaxLossConfig = SoftmaxLossConfig()
    """Training loss and its options (recsys.models.losses): full softmax over the catalogue (the paper's) or
    sampled softmax."""
    output_bias: bool = False
    """Add a learnt bias per item to its score (the paper's output layer). Vectors get one more dimension
    (hidden + 1): 1 on the user side, the bias on the item side."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> BERT4RecConfig:
        if self.hidden % self.n_heads != 0:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        return self


class BERT4Rec(SequenceModel):
    """Bidirectional self-attention encoder with a [MASK] token and a tied item output layer (contract:
    recsys.models.base). `encode` also reads ids n_items + 1 (= `mask_token`, [MASK]); the histories that
    `user_vector` and `score` take are plain (no [MASK]).
    """

    config: BERT4RecConfig

    def __init__(self, n_items: int, config: BERT4RecConfig) -> None:
        super().__init__(n_items, config)
        self.mask_token = n_items + 1
        hidden = config.hidden
        # Rows 0..n_items are padding and the items (what `item_vectors` shows); row n_items + 1 is [MASK].
        self.item_emb = nn.Embedding(n_items + 2, hidden, padding_idx=0)
        # Position 0 is padding; real items get 1..max_len (see `layers.positions_from_first_item`).
        self.pos_emb = nn.Embedding(config.max_len + 1, hidden, padding_idx=0)
        self.emb_norm = nn.LayerNorm(hidden)
        self.emb_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden,
                config.n_heads,
                config.ffn_mult * hidden,
                config.dropout,
                activation=config.activation,
                layer_norm=config.layer_norm,
                attention_dropout=config.attention_dropout,
            )
            for _ in range(config.n_layers)
        )
        # Post-LN blocks already end in a LayerNorm; a second one would only add parameters.
        self.final_norm: nn.Module = nn.LayerNorm(hidden) if config.layer_norm == "pre" else nn.Identity()
        # The paper's output transform before the tied item table: GELU(h W + b), then LayerNorm (as BERT's
        # masked-LM head). It lets the last block's states differ from the item embeddings they score.
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.GELU() if config.activation == "gelu" else nn.ReLU(),
            nn.LayerNorm(hidden),
        )
        self.apply(init_weights)
        # One bias per item (not padding: its score stays 0, as the contract with rankers says).
        self.item_bias = nn.Parameter(torch.zeros(n_items)) if config.output_bias else None

    def objective(self) -> Objective:
        """Training batches hide items and ask for them back (recsys.data.batches.mask_batch)."""
        cfg = self.config
        return Objective("mask", loss=cfg.loss, mask_token=self.mask_token, mask_prob=cfg.mask_prob,
                         last_item_mask_prob=cfg.last_item_mask_prob)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None, *,
               last_only: bool = False) -> Tensor:
        """Output state at every position, each seeing the whole sequence (both directions).

        items: [batch, seq_len] LongTensor, left-padded with 0, may contain [MASK] (= self.mask_token).
        Returns [batch, seq_len, dim]: at a [MASK] position, the vector that scores the hidden item against
        `item_vectors()`. States at padding positions are finite but meaningless. With `last_only`,
        [batch, 1, dim]: the last position's state alone (the top block and the head run for it only).
        dim is hidden, or hidden + 1 with `output_bias` (a last column of ones).
        """
        self.check_history(items, timestamps)
        padding = items == 0  # [batch, seq_len]
        x = self.item_emb(items) + self.pos_emb(positions_from_first_item(padding))  # [batch, seq_len, hidden]
        x = self.emb_dropout(self.emb_norm(x)) * (~padding).unsqueeze(-1)  # padding positions are zero vectors
        mask = attention_bias(padding, causal=False, dtype=x.dtype)  # [batch, 1, 1, seq_len]
        for depth, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and depth == len(self.blocks) - 1)
        states = self.head(self.final_norm(x))  # [batch, seq_len or 1, hidden]
        if self.item_bias is None:
            return states
        return with_unit_column(states)  # [batch, seq_len or 1, hidden + 1]

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """The state of a [MASK] appended after the history: [batch, seq_len] -> [batch, dim].

        A full window (seq_len == max_len) drops its oldest column to make room; with left padding that
        is the oldest item or padding. The [MASK] is the position the next item would take, which is what
        the last-item training windows teach. A history of only padding gives a finite vector (cold start).
        """
        masks = torch.full((items.shape[0], 1), self.mask_token, dtype=items.dtype, device=items.device)
        query = torch.cat([items, masks], dim=1)[:, -self.config.max_len:]  # [batch, <= max_len]
        # Only the [MASK]'s state is needed: the top block's other queries and the head's other rows were ~40%
        # of the time of scoring every ml-1m user (validation, serving).
        return self.encode(query, last_only=True)[:, -1, :]  # [batch, dim]

    def item_vectors(self) -> Tensor:
        """The tied item table [n_items + 1, dim]: row 0 is padding (all zeros); the [MASK] row is left
        out, since it is never a recommendation. With `output_bias`, each row ends with the item's bias."""
        table = self.item_emb.weight[: self.n_items + 1]  # [n_items + 1, hidden]
        if self.item_bias is None:
            return table
        bias = torch.cat([self.item_bias.new_zeros(1), self.item_bias])  # [n_items + 1]: padding's is 0
        return with_bias_column(table, bias)  # [n_items + 1, hidden + 1]
