"""Recformer itself: the language model, fine-tuned, reads a whole history as one text. A GPU model.

Paper: Jiacheng Li, Ming Wang, Jin Li, Jinmiao Fu, Xin Shen, Jingbo Shang and Julian McAuley, "Text Is All You
Need: Learning Language Representations for Sequential Recommendation", KDD 2023 (arXiv:2305.13731).

Items are their key-value text and no item id is learnt (`recsys.models.text_encoding`, shared with the frozen
`recsys.models.recformer`). A history is flattened into ONE token sequence, most recent item first
([CLS] item_1 item_2 ... [SEP], capped at `max_tokens`), with learnt item-position and token-type (key/value)
embeddings added to the language model's; the same encoder on one item's text gives that item's vector. Both
are mean-pooled, L2-normalised, and scored by cosine / temperature. The language model is fine-tuned. As in
Recformer's two-stage fine-tuning, item vectors are a cache (`item_cache`): training contrasts histories
against the cached vectors of all items, and the cache is re-encoded between epochs (`refresh_item_cache`,
called by training). On 2 CPU cores an ML-1M epoch takes ~15 minutes.

Configs written before this model had a file of its own say `model: {name: recformer, mode: full}`; they
load as this model (`recsys.models.resolve_legacy_model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from recsys.config import Positive
from recsys.models.base import Objective
from recsys.models.text_encoding import TextItemConfig, TextItemModel


class RecformerFullConfig(TextItemConfig):
    """Hyperparameters of the fine-tuned text model; the keys it shares with recformer are TextItemConfig's."""

    max_tokens: Positive = 256
    """Token budget of a flattened history, [CLS] and [SEP] included (at most the backbone's 512)."""

    @model_validator(mode="after")
    def _tokens_hold_one_item(self) -> RecformerFullConfig:
        if self.max_tokens < self.max_item_tokens + 2:
            raise ValueError(f"max_tokens ({self.max_tokens}) must hold one item: at least max_item_tokens + 2 "
                             f"({self.max_item_tokens + 2})")
        return self


class RecformerFull(TextItemModel):
    """Fine-tuned text-only sequential recommender (see the module docstring); `RecformerFull(n_items, config)`,
    then `set_item_texts` (see `TextItemModel`). Contract: recsys.models.base."""

    unit_item_cache = False  # the cache holds the raw pooled states; `item_vectors` normalises them
    config: RecformerFullConfig

    def __init__(self, n_items: int, config: RecformerFullConfig) -> None:
        super().__init__(n_items, config)
        if config.max_tokens > self.backbone.config.max_position_embeddings:
            raise ValueError(f"max_tokens ({config.max_tokens}) exceeds the backbone's "
                             f"{self.backbone.config.max_position_embeddings} positions")
        # Zero-initialised, so training starts from the pretrained encoder exactly.
        self.item_pos_emb = nn.Embedding(config.max_len + 1, self.lm_dim)
        self.token_type_emb = nn.Embedding(3, self.lm_dim)
        nn.init.zeros_(self.item_pos_emb.weight)
        nn.init.zeros_(self.token_type_emb.weight)

    def objective(self) -> Objective:
        """One state per history serves only the last position's target ("last")."""
        return Objective("last", loss=self.config.loss)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None, *,
               last_only: bool = False) -> Tensor:
        """The whole history is one text, so only its end has a state: [batch, seq_len, dim] is zero but for
        the last position (training uses the "last" objective), or [batch, 1, dim] with `last_only`."""
        self.check_history(items, timestamps)
        state = self._encode_history(items).unsqueeze(1)  # [batch, 1, dim]
        if last_only:
            return state
        return torch.cat([state.new_zeros(items.shape[0], items.shape[1] - 1, state.shape[2]), state], dim=1)

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """[batch, seq_len] history (oldest first) -> [batch, dim] query vector."""
        return self.encode(items, last_only=True)[:, -1, :]

    def item_vectors(self) -> Tensor:
        """[n_items + 1, dim], row 0 (padding) zero. A row depends only on its item's text."""
        return F.normalize(self.item_cache, dim=-1)  # cached, no gradient: Recformer's item side; row 0 zero

    def _token_embeddings(self, ids: Tensor, types: Tensor, positions: Tensor) -> Tensor:
        embeds = super()._token_embeddings(ids, types, positions) + self.token_type_emb(types)
        return embeds + self.item_pos_emb(positions.clamp(max=self.config.max_len))

    def _encode_history(self, items: Tensor) -> Tensor:
        """Flatten each history, most recent item first, into one token sequence and encode it: [batch, dim]."""
        if self.training and torch.is_grad_enabled():
            self._stale = True  # a gradient step follows: the cached item vectors will be an older encoder's
        ids, types, positions = self._flatten(items.flip(1), self.config.max_tokens - 2)  # padding moves last
        pooled = self._lm_pool(ids, types, positions)
        return F.normalize(pooled, dim=-1) / self.config.temperature
