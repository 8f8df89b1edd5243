"""Most-popular baseline: every user gets the items most often seen in the training split.

The non-personalised reference point that any sequence model must beat; papers on ML-1M report it
alongside their models (e.g. Sun et al., "BERT4Rec", CIKM 2019, Table 2 "POP"; Kang & McAuley, "SASRec",
ICDM 2018, Table 3 "PopRec").

It follows the same contract as the neural models, so evaluation, retrieval and serving need no special
case: `item_vectors()` is the [n_items + 1, 1] column of training counts and `user_vector` is the constant
[1] for everyone, so `score = user_vector @ item_vectors().T` ranks items by count, and the evaluator and
the FAISS index exclude the user's history as usual. It is fitted by counting (`fit_counts`), not by
gradient steps: its `objective()` ("count") tells training to skip optimisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive
from recsys.models.base import Objective, SequenceModel


class PopularityConfig(ConfigModel):
    """The popularity baseline has no hyperparameters; `max_len` only sizes the history tensors that
    evaluation and retrieval pass in (the scores ignore them; the history excluded from the ranking is
    the user's whole history, kept apart from this input)."""

    max_len: Positive = 1
    """Length of the (ignored) input history; 1 keeps evaluation batches small."""


class Popularity(SequenceModel):
    """Scores every item by its number of interactions in the training split, the same for every user."""

    config: PopularityConfig

    def __init__(self, n_items: int, config: PopularityConfig) -> None:
        super().__init__(n_items, config)
        # A frozen Parameter rather than a buffer: it is saved and loaded with the state dict either way,
        # but the shared evaluator finds the model's device from `next(model.parameters())`.
        self.counts = nn.Parameter(torch.zeros(n_items + 1), requires_grad=False)  # [n_items + 1]; [0] = padding

    @torch.no_grad()
    def fit_counts(self, train_sequences: Sequence[Sequence[int]] | Tensor) -> "Popularity":
        """Count item ids in the training sequences (lists of item ids, or a tensor of ids in any shape);
        0 is padding and is not counted. Replaces earlier counts. Returns self."""
        if isinstance(train_sequences, Tensor):
            flat = train_sequences.reshape(-1).long()
        else:
            flat = torch.tensor([int(item) for seq in train_sequences for item in seq], dtype=torch.long)
        flat = flat[flat != 0].cpu()
        if len(flat) and (int(flat.min()) < 0 or int(flat.max()) > self.n_items):
            raise ValueError(f"item ids must be in 1..{self.n_items}, got values in {int(flat.min())}..{int(flat.max())}")
        counts = torch.bincount(flat, minlength=self.n_items + 1).to(self.counts.dtype)  # [n_items + 1]
        counts[0] = 0.0  # padding is never recommended (and evaluation drops column 0 anyway)
        self.counts.copy_(counts)
        return self

    def objective(self) -> Objective:
        """Fitted by `fit_counts` on the training split; training runs no optimiser."""
        return Objective("count")

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """The constant state 1 at every position: [batch, seq_len] -> [batch, seq_len, 1]."""
        self.check_history(items, timestamps)
        return torch.ones(*items.shape, 1, dtype=self.counts.dtype, device=self.counts.device)

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """The constant [1] for every user, whatever the history: [batch, seq_len] -> [batch, 1]."""
        return self.encode(items, timestamps)[:, -1, :]  # [batch, 1]

    def item_vectors(self) -> Tensor:
        """Training counts as a column [n_items + 1, 1]; row 0 (padding) is 0."""
        return self.counts.unsqueeze(1)
