"""The model contract: what every sequence model gives training, evaluation, saving, retrieval and serving.

A model is built as `Model(n_items, config)` from its config (beside it in its file) and registered in
`recsys.models.MODELS`. The layers above know a model only through `SequenceModel`: they never probe its
attributes. Inputs are LEFT-padded LongTensors `[batch, seq_len]` of item ids in 0..n_items (0 = padding,
the most recent item last), seq_len <= `max_len`; models with `uses_timestamps` also read the items'
timestamps (`[batch, seq_len]`, seconds, 0 at padding), the others accept and ignore them.

What a model provides:
- `encode(items, timestamps, query_times)`: a state per position, `[batch, seq_len, dim]`, which training
  scores against `item_vectors()` at the positions that have a target. `query_times[:, t]` is when position
  t's prediction is asked for (in training: the target's timestamp).
- `user_vector(items, timestamps, at)`: the query for what comes after the history, `[batch, dim]`; `at`
  (`[batch]`) is when it is asked (None: no time context, as at the last interaction).
- `item_vectors()`: `[n_items + 1, dim]`, row 0 padding. `score` is `user_vector @ item_vectors().T` and is
  not overridden, which is what lets retrieval put the item vectors in an inner-product FAISS index.
- `objective()`: how it is trained: which batches (next item at every position, masked items, the last
  item only, or counting without an optimiser) and which loss (`recsys.models.losses`).
- `history_scores(items, timestamps, at)`: optional (None by default), for repeat-aware models: a score
  per history position, `[batch, seq_len]`, added to the inner product of the item at that position (the
  same value wherever one item occurs; padding ignored). It changes only the scores of items in the
  history, so FAISS still finds the best new items exactly and retrieval re-ranks the history items on
  top (`recsys.retrieval.recommender`); `score` includes it.
- `history_logits(items, timestamps, query_times, states)`: optional (None by default), for repeat-aware
  models that learn their memory term with the sequence model: `(values, applies)`, both `[batch, seq_len,
  seq_len]`: the extra logit at position t's prediction of the item at history position j, and where it
  applies: only j <= t and one position of each distinct item (training adds it to the softmax, and a
  sampled softmax also ranks the target against those items: `recsys.models.losses.HistoryLogits`). It
  must agree with `history_scores` at the last position.
Optional hooks with do-nothing defaults: `refresh_item_cache` (item vectors cached from a trained
encoder), `bundle`/`from_bundle` (files a saved model carries besides its weights), and for text models
(`needs_item_texts`) `set_item_texts`/`add_items`; for counting models `fit_counts`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from recsys.models.losses import LossConfig

BATCHES = ("shift", "mask", "last", "count")
Batches = Literal["shift", "mask", "last", "count"]


@dataclass(frozen=True)
class Objective:
    """How training fits a model.

    batches: "shift" pairs every position with the next item; "mask" hides items (BERT4Rec's cloze task) and
    asks for them back; "last" asks only for each window's last item (one state per history); "count" runs
    no optimiser and calls `fit_counts` on the training sequences.
    """

    batches: Batches
    loss: LossConfig | None = None
    """The loss and its options, the model config's `loss` (None for "count", which trains no loss)."""
    mask_token: int = 0
    """"mask": the id that hides an item."""
    mask_prob: float = 0.0
    """"mask": share of the items hidden."""
    last_item_mask_prob: float = 0.0
    """"mask": share of the windows whose last item alone is hidden (what inference asks)."""

    def __post_init__(self) -> None:
        if self.batches not in BATCHES:
            raise ValueError(f"batches must be one of {', '.join(BATCHES)}, got {self.batches!r}")


@dataclass(frozen=True)
class ItemTextFit:
    """How a text model's per-item token budget fits the catalogue's texts (training reports the share cut)."""

    token_counts: list[int]
    """Each item's whole text, in tokens, before the cut."""
    budget: int
    """Tokens kept per item."""


class SequenceModel(nn.Module, abc.ABC):
    """Base class of every sequence model; see the module docstring for the contract."""

    uses_timestamps: ClassVar[bool] = False
    """True: `encode` and `user_vector` read timestamps, and training, saving and serving carry them."""
    needs_item_texts: ClassVar[bool] = False
    """True: training hands the catalogue's item texts over with `set_item_texts` before it starts."""

    def __init__(self, n_items: int, config: Any) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be at least 1, got {n_items}")
        self.n_items = n_items
        self.config = config

    @property
    def max_len(self) -> int:
        """Longest history the model reads (longer ones keep their most recent items)."""
        return int(self.config.max_len)

    # -- what every model provides ---------------------------------------------------------------------------
    @abc.abstractmethod
    def objective(self) -> Objective:
        """How this model trains (per instance: it may depend on the config)."""

    @abc.abstractmethod
    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """[batch, seq_len] history -> [batch, seq_len, dim] states (see the module docstring)."""

    @abc.abstractmethod
    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """[batch, seq_len] history -> [batch, dim] query for the next item."""

    @abc.abstractmethod
    def item_vectors(self) -> Tensor:
        """[n_items + 1, dim] item vectors; row 0 is padding and scores 0 against any query."""

    def forward(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None) -> Tensor:
        """Same as `encode`."""
        return self.encode(items, timestamps, query_times)

    def score(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """Scores of every catalogue item as the next one: [batch, seq_len] -> [batch, n_items + 1].

        Column 0 (padding) is a dot product with the zero row, i.e. 0; rankers drop it
        (`recsys.evaluation.metrics` does).
        """
        scores = self.user_vector(items, timestamps, at) @ self.item_vectors().T  # [batch, n_items + 1]
        extra = self.history_scores(items, timestamps, at)
        if extra is None:
            return scores
        return scores + scatter_history(extra.to(scores.dtype), items, scores.shape[1])

    def history_scores(self, items: Tensor, timestamps: Tensor | None = None,
                       at: Tensor | None = None) -> Tensor | None:
        """Repeat-aware models: [batch, seq_len] extra score of each history position's item (see the module
        docstring); None (the default): the score is the inner product alone."""
        return None

    def history_logits(self, items: Tensor, timestamps: Tensor | None, query_times: Tensor | None,
                       states: Tensor) -> tuple[Tensor, Tensor] | None:
        """Repeat-aware models trained with their memory term: ([batch, seq_len, seq_len] extra logits of each
        position's history items, the same shape of bool: where they apply), from `encode`'s `states` (see
        the module docstring); None (the default): training scores the inner product alone."""
        return None

    # -- shared checks --------------------------------------------------------------------------------------
    def check_history(self, items: Tensor, timestamps: Tensor | None = None) -> None:
        """ValueError unless `items` is a [batch, seq_len] integer tensor with seq_len <= max_len, and
        `timestamps`, when given, has its shape."""
        if items.dim() != 2:
            raise ValueError(f"items must be [batch, seq_len], got shape {tuple(items.shape)}")
        if items.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"items must be an integer tensor of item ids, got {items.dtype}")
        if items.shape[1] > self.max_len:
            raise ValueError(f"sequence length {items.shape[1]} exceeds max_len {self.max_len}; keep the most "
                             "recent items")
        if timestamps is not None and timestamps.shape != items.shape:
            raise ValueError(f"timestamps must have the items' shape {tuple(items.shape)}, got "
                             f"{tuple(timestamps.shape)}")

    # -- optional hooks -------------------------------------------------------------------------------------
    def refresh_item_cache(self) -> None:
        """Re-derive cached item vectors after the weights changed (training calls it at each epoch's start)."""

    def bundle(self) -> dict[str, Path]:
        """Files a saved model must carry besides the state dict (name in the saved model -> file here)."""
        return {}

    @classmethod
    def from_bundle(cls, config: Any, files: Mapping[str, Path]) -> Any:
        """The config to rebuild a saved model with, given the files `bundle` named (now inside it)."""
        return config

    def fit_counts(self, train_sequences: Sequence[Sequence[int]] | Tensor) -> SequenceModel:
        """Models with the "count" objective: fit from the training sequences. Returns self."""
        raise TypeError(f"{type(self).__name__} is trained by gradient steps, not by counting")

    def set_item_texts(self, attributes: Sequence[Mapping[str, str]]) -> ItemTextFit:
        """Text models: make `attributes` (item_idx 1..n in order) the catalogue; says how the texts fit."""
        raise TypeError(f"{type(self).__name__} does not read item texts")

    def add_items(self, attributes: Sequence[Mapping[str, str]]) -> None:
        """Text models: append items described by their texts alone."""
        raise TypeError(f"{type(self).__name__} does not read item texts, so it cannot add items")


def scatter_history(values: Tensor, items: Tensor, width: int) -> Tensor:
    """[batch, seq_len] per-position values -> [batch, width] dense, at each position's item id (an item at
    several positions carries one value: any of them); column 0 (padding) stays 0."""
    dense = values.new_zeros(items.shape[0], width)
    dense.scatter_(1, items.long(), values)
    dense[:, 0] = 0.0
    return dense
