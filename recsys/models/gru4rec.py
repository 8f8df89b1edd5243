"""GRU4Rec: a recurrent (GRU) network over a user's item sequence that predicts the next item.

Papers: Balázs Hidasi, Alexandros Karatzoglou, Linas Baltrunas and Domonkos Tikk, "Session-based
Recommendations with Recurrent Neural Networks", ICLR 2016 (arXiv:1511.06939); and, for what a faithful
set-up is, Balázs Hidasi and Ádám Tibor Czapp, "The effect of third party implementations on
reproducibility", RecSys 2023, which lists how third-party versions differ from the official code
(hidasib/GRU4Rec).

Here: item embedding -> dropout -> GRU (n_layers) -> dropout -> states. The output layer is the item
embedding table itself (tied), which is the official code's `constrained_embedding` option (its input
embedding and output weights are one matrix). That makes the GRU
width the embedding width, and lets retrieval score items with `user_vector @ item_vectors().T` in a FAISS
inner-product index. The official output bias is left out for the same reason (an item bias would not
survive the inner product).

Training follows this toolkit's sequence protocol rather than the official session-parallel mini-batches:
whole windows with the "shift" objective and one of the shared losses (`recsys.models.losses`: full
softmax "ce" as in Klenitskiy & Vasilev, RecSys 2023; "sampled_ce"; "bce"; "gbce"). The official
BPR-max / TOP1-max losses and its negative sampling are not implemented.

Padding: sequences arrive LEFT-padded, but a GRU that reads padding first ends in a different state (its
biases move the state even on zero input). So each row is rotated to be left-aligned before the GRU, which
then reads the real items first, starting from the zero state, and the padding after them; the states are
rotated back. A real position's state thus depends only on the real items up to it, whatever the padding.
Nothing is packed (`pack_padded_sequence` would also need the rotation, plus lengths on the CPU); the
padding steps cost compute but not correctness, and length-bucketed batches keep them few.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive, Rate
from recsys.models.base import Objective, SequenceModel
from recsys.models.layers import Dropout
from recsys.models.losses import LossConfig


class GRU4RecConfig(ConfigModel):
    """Hyperparameters of GRU4Rec. The catalogue size (n_items) comes from the data, not from here."""

    max_len: Positive = 200
    """Longest history the model reads; longer ones keep their most recent max_len items."""
    hidden: Positive = 64
    """Width of the GRU state and, since the output layer is the tied item table, of item embeddings."""
    n_layers: Positive = 1
    """Stacked GRU layers (the official code's best settings use one)."""
    dropout_embed: Rate = 0.0
    """Dropout on the item embeddings fed to the GRU (official: dropout_p_embed)."""
    dropout_hidden: Rate = 0.2
    """Dropout on the GRU output states and between GRU layers (official: dropout_p_hidden)."""
    loss: LossConfig = LossConfig()
    """Training loss and its options (recsys.models.losses): full softmax 'ce' by default, sampled softmax,
    BCE, or gSASRec's 'gbce'."""


class GRU4Rec(SequenceModel):
    """GRU sequence encoder with a tied item output layer (contract: recsys.models.base)."""

    config: GRU4RecConfig

    def __init__(self, n_items: int, config: GRU4RecConfig) -> None:
        super().__init__(n_items, config)
        hidden = config.hidden
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.emb_dropout = Dropout(config.dropout_embed)
        self.gru = nn.GRU(
            hidden,
            hidden,
            num_layers=config.n_layers,
            batch_first=True,
            dropout=config.dropout_hidden if config.n_layers > 1 else 0.0,  # torch applies it between layers only
        )
        self.out_dropout = Dropout(config.dropout_hidden)
        # The official code's init for its item matrices: uniform in +-sqrt(6 / (rows + cols)) (Glorot).
        # Small item vectors keep the first logits near zero; torch's N(0, 1) default would not.
        bound = math.sqrt(6.0 / (n_items + 1 + hidden))
        with torch.no_grad():
            nn.init.uniform_(self.item_emb.weight, -bound, bound)
            self.item_emb.weight[0].zero_()

    def objective(self) -> Objective:
        """Training batches pair each position with the next item (recsys.data.batches.shift_batch)."""
        cfg = self.config
        return Objective("shift", loss=cfg.loss)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """GRU state after every position; the state at position t depends only on the real items up to t.

        items: [batch, seq_len] LongTensor, left-padded with 0. Returns [batch, seq_len, hidden]; states at
        padding positions are finite but meaningless.
        """
        self.check_history(items, timestamps)
        seq_len = items.shape[1]
        lengths = (items != 0).sum(dim=1, keepdim=True)  # [batch, 1]
        steps = torch.arange(seq_len, device=items.device).unsqueeze(0)  # [1, seq_len]
        # Left-aligned column j holds left-padded column (j + seq_len - length) mod seq_len: the real items
        # first, then the padding that stood before them.
        to_left = (steps + seq_len - lengths) % seq_len  # [batch, seq_len]
        aligned = items.gather(1, to_left)  # [batch, seq_len], real items first
        x = self.emb_dropout(self.item_emb(aligned))  # [batch, seq_len, hidden]; padding rows are zero
        states, _ = self.gru(x)  # [batch, seq_len, hidden], from the zero initial state
        states = self.out_dropout(states)
        # Back to the input's layout: left-padded column i came from left-aligned column (i + length) mod seq_len.
        back = ((steps + lengths) % seq_len).unsqueeze(-1).expand_as(states)  # [batch, seq_len, hidden]
        return states.gather(1, back)  # [batch, seq_len, hidden]

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """The state after the most recent item (the last column): [batch, seq_len] -> [batch, hidden].

        A history of only padding gives a finite vector (a cold-start query).
        """
        return self.encode(items, timestamps)[:, -1, :]  # [batch, hidden]

    def item_vectors(self) -> Tensor:
        """The tied item embedding table [n_items + 1, hidden]; row 0 is padding (all zeros)."""
        return self.item_emb.weight
