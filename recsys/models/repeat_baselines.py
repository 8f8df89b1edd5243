"""Repeat baselines: what a practitioner tries first on a log where people come back to what they had.

* `personal_popularity`: the user's own counts. Items of the history rank by how often the user had them,
  equal counts by recency (the later an item's last position, the higher); after them every other item by
  its training popularity. Li et al.'s "G-P Top Freq" in "A Next Basket Recommendation Reality Check"
  (ACM TOIS 2023), which beats most published next-basket models on repeat-heavy data.
* `repeat_recent`: "most recent again": history items by recency alone (the last item first), then every
  other item by popularity.

(Global popularity, the same list for everyone, is `popularity`.)

Both follow the model contract (recsys.models.base) as `popularity` does, fitted by counting ("count"):
the inner product `user_vector @ item_vectors().T` is the popularity fallback, each item's training count
over (max count + 1), so in [0, 1); `history_scores` lifts each history item to
`personal score - its fallback`, where the personal score is at least 1, so every history item ranks above
every other item, and among themselves exactly by the personal score:

    personal_popularity:  count_in_history(i) + recency(i)      recency(i) = (last position of i + 1) / (L + 1)
    repeat_recent:        1 + recency(i)

with positions 0..L-1 over the model's input of length L (max_len, the most recent items). recency is in
(0, 1), so it only breaks ties of counts. Scored with the history excluded (evaluation.exclude_seen: true)
both are plain popularity; they are meant for exclude_seen: false.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from recsys.config import ConfigModel, Positive
from recsys.models.base import Objective, SequenceModel


class RepeatBaselineConfig(ConfigModel):
    """A repeat baseline reads the most recent max_len items of a history; nothing is trained."""

    max_len: Positive = 500
    """Longest history read: counts and recency are over the most recent max_len items (Instacart users have a
    median of 175 items, Ta-Feng's 31)."""
    fallback: Literal["popularity", "none"] = "popularity"
    """How items outside the history rank: 'popularity' by their training counts, 'none' all tied (last)."""


def history_counts(items: Tensor, n_items: int) -> Tensor:
    """[batch, seq_len] item ids -> [batch, seq_len] how often each position's item occurs in its row
    (0 at padding)."""
    dense = torch.zeros(items.shape[0], n_items + 1, dtype=torch.float32, device=items.device)
    dense.scatter_add_(1, items, torch.ones_like(items, dtype=torch.float32))
    dense[:, 0] = 0.0
    return dense.gather(1, items)


def history_recency(items: Tensor, n_items: int) -> Tensor:
    """[batch, seq_len] -> [batch, seq_len] (last position of the position's item + 1) / (seq_len + 1), in
    (0, 1): later is higher; 0 at padding."""
    length = items.shape[1]
    positions = torch.arange(1, length + 1, device=items.device, dtype=torch.float32).expand(items.shape[0], -1)
    dense = torch.zeros(items.shape[0], n_items + 1, dtype=torch.float32, device=items.device)
    dense.scatter_reduce_(1, items, positions, reduce="amax")
    dense[:, 0] = 0.0
    return dense.gather(1, items) / (length + 1)


class _HistoryBaseline(SequenceModel):
    """Shared by the repeat baselines: the popularity fallback and the history term (see the module doc)."""

    config: RepeatBaselineConfig

    def __init__(self, n_items: int, config: RepeatBaselineConfig) -> None:
        super().__init__(n_items, config)
        # A frozen Parameter, as in Popularity: saved with the state dict, and it gives the model a device.
        self.fallback = nn.Parameter(torch.zeros(n_items + 1), requires_grad=False)  # [n_items + 1], in [0, 1)

    @torch.no_grad()
    def fit_counts(self, train_sequences: Sequence[Sequence[int]] | Tensor) -> "_HistoryBaseline":
        """Training counts as the fallback, scaled into [0, 1). Returns self."""
        flat = (train_sequences.reshape(-1).long() if isinstance(train_sequences, Tensor)
                else torch.tensor([int(i) for seq in train_sequences for i in seq], dtype=torch.long))
        flat = flat[flat != 0].cpu()
        if len(flat) and (int(flat.min()) < 0 or int(flat.max()) > self.n_items):
            raise ValueError(f"item ids must be in 1..{self.n_items}, got values in {int(flat.min())}..{int(flat.max())}")
        counts = torch.bincount(flat, minlength=self.n_items + 1).float()
        counts[0] = 0.0
        if self.config.fallback == "none":
            counts.zero_()
        self.fallback.copy_(counts / (counts.max() + 1.0))
        return self

    def objective(self) -> Objective:
        return Objective("count")

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """The constant state 1 at every position: [batch, seq_len] -> [batch, seq_len, 1]."""
        self.check_history(items, timestamps)
        return torch.ones(*items.shape, 1, dtype=self.fallback.dtype, device=self.fallback.device)

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        return self.encode(items, timestamps)[:, -1, :]  # [batch, 1]

    def item_vectors(self) -> Tensor:
        """The popularity fallback as a column [n_items + 1, 1]; row 0 is 0."""
        return self.fallback.unsqueeze(1)

    def history_scores(self, items: Tensor, timestamps: Tensor | None = None,
                       at: Tensor | None = None) -> Tensor:
        """[batch, seq_len]: the personal score minus the item's fallback (so the total is the personal score)."""
        self.check_history(items, timestamps)
        items = items.long()
        personal = self.personal_scores(items)
        return torch.where(items > 0, personal - self.fallback[items], torch.zeros_like(personal))

    def personal_scores(self, items: Tensor) -> Tensor:
        raise NotImplementedError


class PersonalPopularity(_HistoryBaseline):
    """History items by the user's own counts, ties by recency, then the rest by popularity."""

    def personal_scores(self, items: Tensor) -> Tensor:
        return history_counts(items, self.n_items) + history_recency(items, self.n_items)


class RepeatRecent(_HistoryBaseline):
    """History items by recency (the most recent first), then the rest by popularity."""

    def personal_scores(self, items: Tensor) -> Tensor:
        return 1.0 + history_recency(items, self.n_items)
