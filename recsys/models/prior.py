"""A catalogue prior: any model's scores plus a fixed log-popularity per item, still one inner product.

    score(history, i) = model.score(history)[i] + weight * log p(i)

p(i) is each item's share of some interaction counts, add-one smoothed so that an item never counted (a new
one) gets the smallest prior rather than minus infinity. The prior travels as one extra dimension, 1 on the
query side and `weight * log p(i)` on the item side, so `score == user_vector @ item_vectors().T` still holds
and FAISS inner-product retrieval stays exact.

What it is for: a model trained with `trainer.popularity_correction` learnt its scores as a correction on top
of the training catalogue's log-popularity (the loss added it to every logit). Pointed at another catalogue,
such a model needs that catalogue's popularity in its place (label-shift adaptation: the affinity part
carries over, the prior is the new catalogue's), which is what `recsys index set-prior` writes: counts from an
interaction log, nothing trained. Weight 1 is the scale the correction was trained at.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recsys.models.base import Objective, SequenceModel


def with_unit_column(queries: Tensor) -> Tensor:
    """[..., dim] -> [..., dim + 1]: a last column of ones, the query side of a per-item score term carried as
    one more dimension (its item side: `with_bias_column`)."""
    return torch.cat([queries, queries.new_ones(*queries.shape[:-1], 1)], dim=-1)


def with_bias_column(vectors: Tensor, bias: Tensor) -> Tensor:
    """[n_items + 1, dim], [n_items + 1] -> [n_items + 1, dim + 1]: each item's vector ending in its bias, so
    that `with_unit_column(q) @ result.T == q @ vectors.T + bias`."""
    return torch.cat([vectors, bias.to(vectors.dtype).unsqueeze(1)], dim=1)


def interaction_counts(sequences: Sequence[Sequence[int]], n_items: int) -> Tensor:
    """[n_items] how often each item_idx 1..n_items occurs in `sequences` (lists of item_idx)."""
    every = torch.as_tensor([item for items in sequences for item in items], dtype=torch.long)
    return torch.bincount(every, minlength=n_items + 1)[1:]


def log_prior(counts: Sequence[int] | Tensor) -> Tensor:
    """[n_items] interaction counts (item_idx 1..n in order) -> [n_items + 1] log shares, add-one smoothed;
    entry 0 (padding) is 0, which no ranking uses."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or len(counts) == 0:
        raise ValueError(f"counts must be a non-empty 1-d list, got shape {tuple(counts.shape)}")
    if bool((counts < 0).any()):
        raise ValueError("counts must not be negative")
    smoothed = counts + 1.0
    return torch.cat([smoothed.new_zeros(1), (smoothed / smoothed.sum()).log()]).float()


class WithItemPrior(SequenceModel):
    """`model` with `weight * log_prior(counts)` added to every item's score (see the module docstring).

    Holds no weights of its own: the prior is rebuilt from the counts a saved model keeps in its manifest,
    so the wrapped model's state dict is the one that is saved.
    """

    def __init__(self, model: SequenceModel, counts: Sequence[int] | Tensor, weight: float = 1.0) -> None:
        nn.Module.__init__(self)  # n_items and config are the wrapped model's, not copies of them
        if len(counts) != model.n_items:
            raise ValueError(f"the prior has {len(counts)} counts but the model's catalogue has {model.n_items} items")
        self.model = model
        self.weight = float(weight)
        self.register_buffer("item_bias", self.weight * log_prior(counts), persistent=False)  # [n_items + 1]

    @property  # type: ignore[override]
    def n_items(self) -> int:
        return int(self.model.n_items)

    @property  # type: ignore[override]
    def config(self) -> object:
        return self.model.config

    @property
    def uses_timestamps(self) -> bool:  # type: ignore[override]
        return self.model.uses_timestamps

    def objective(self) -> Objective:
        return self.model.objective()

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """[batch, seq_len] -> [batch, seq_len, dim + 1]: the model's states and a constant 1 each."""
        return with_unit_column(self.model.encode(items, timestamps, query_times))

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """[batch, seq_len] -> [batch, dim + 1]: the model's query and a constant 1 that picks up the prior."""
        return with_unit_column(self.model.user_vector(items, timestamps, at))

    def item_vectors(self) -> Tensor:
        """[n_items + 1, dim + 1]: the model's item vectors and each item's weighted log prior."""
        return with_bias_column(self.model.item_vectors(), self.item_bias)
