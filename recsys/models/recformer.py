"""Recformer-style text model, the cheap one for CPUs: frozen text vectors, a small adapter, causal blocks.

Paper: Jiacheng Li, Ming Wang, Jin Li, Jinmiao Fu, Xin Shen, Jingbo Shang and Julian McAuley, "Text Is All You
Need: Learning Language Representations for Sequential Recommendation", KDD 2023 (arXiv:2305.13731).

Items are their key-value text and no item id is learnt (`recsys.models.text_encoding`, shared with
`recsys.models.recformer_full`). Here the language model is frozen and encodes each item's text once
(`item_cache`, sentence-transformers' mean pooling + L2 norm); a small trainable adapter maps those vectors to
the sequence width, and SASRec-like causal blocks (`recsys.models.layers`) run over the adapted vectors, tied to
the output like SASRec's item table. Recformer's own model, the language model fine-tuned over the flattened
history, is `recformer_full` (a GPU model).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, nn

from recsys.config import Positive, PositiveFloat, Rate
from recsys.models.base import Objective
from recsys.models.layers import Dropout, TransformerBlock, attention_bias, init_weights, positions_from_first_item
from recsys.models.text_encoding import TextItemConfig, TextItemModel


class RecformerConfig(TextItemConfig):
    """Hyperparameters of the frozen text model; the keys it shares with recformer_full are TextItemConfig's."""

    hidden: Positive = 64
    """Width of the adapter output and of the sequence transformer."""
    n_layers: Positive = 2
    """Transformer blocks over the item sequence."""
    n_heads: Positive = 1
    """Attention heads per block; hidden must be divisible by it."""
    dropout: Rate = 0.2
    """Dropout on inputs and residual branches."""
    ffn_mult: Positive = 1
    """Feed-forward inner size = ffn_mult * hidden."""
    adapter: Literal["linear", "mlp"] = "mlp"
    """Text vector -> item vector map: one linear layer, or a two-layer MLP (GELU)."""
    similarity: Literal["dot", "cosine"] = "dot"
    """Score by inner product (as SASRec), or by cosine / temperature (as Recformer; recformer_full always
    does). Cosine leaves an item no norm to learn its popularity in, which helps a model used on another
    catalogue, whose items' popularity it cannot know."""
    item_tower: Literal["adapter", "text"] = "adapter"
    """An item's vector is the adapter's output (learnt on the training catalogue), or "text": the language
    model's own vector, unchanged, with the sequence side projected into its space. With "text" nothing on
    the item side is learnt, so another catalogue's items are scored exactly as the training items were: the
    setting for using a model on a catalogue it was not trained on. Needs cosine."""
    last_item_residual: bool = False
    """item_tower "text": each state adds its own item's text vector to the projected sequence state (the
    projection starts at zero): an untrained model recommends what reads most like the last item, and training
    learns how far to move from that."""
    residual_weight: PositiveFloat | None = None
    """last_item_residual: None adds the projected state as it comes, so training decides how far the query
    moves from the last item (it moves far); a number w fixes the mix: the projected state is normalised and
    the last item's (unit) text vector added with weight w, so "more like the last item" keeps its share
    wherever the model is used, on another catalogue too."""

    @model_validator(mode="after")
    def _consistent(self) -> RecformerConfig:
        if self.hidden % self.n_heads != 0:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        if self.item_tower == "text" and self.similarity != "cosine":
            raise ValueError("item_tower 'text' scores by cosine: set similarity: cosine")
        if self.last_item_residual and self.item_tower != "text":
            raise ValueError("last_item_residual needs item_tower 'text' (it adds text vectors to the query)")
        if self.residual_weight is not None and not self.last_item_residual:
            raise ValueError(f"residual_weight ({self.residual_weight}) needs last_item_residual")
        return self


class Recformer(TextItemModel):
    """Frozen-text sequential recommender (see the module docstring); `Recformer(n_items, config)`, then
    `set_item_texts` (see `TextItemModel`). Contract: recsys.models.base."""

    config: RecformerConfig

    def __init__(self, n_items: int, config: RecformerConfig) -> None:
        super().__init__(n_items, config)
        self.backbone.requires_grad_(False)  # frozen: it only ever encodes the catalogue, never trains
        cfg, hidden, lm_dim = config, config.hidden, self.lm_dim
        self.adapter: nn.Module = (nn.Linear(lm_dim, hidden) if cfg.adapter == "linear" else
                                   nn.Sequential(nn.Linear(lm_dim, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden)))
        self.pos_emb = nn.Embedding(cfg.max_len + 1, hidden, padding_idx=0)
        self.emb_dropout = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, cfg.n_heads, cfg.ffn_mult * hidden, cfg.dropout, activation="gelu",
                             layer_norm="pre", attention_dropout=0.0)
            for _ in range(cfg.n_layers)
        )
        self.final_norm = nn.LayerNorm(hidden)
        for module in (self.adapter, self.pos_emb, self.blocks, self.final_norm):
            module.apply(init_weights)
        if cfg.item_tower == "text":
            self.to_text = nn.Linear(hidden, lm_dim)  # sequence state -> the language model's space
            init_weights(self.to_text)
            if cfg.last_item_residual and cfg.residual_weight is None:
                nn.init.zeros_(self.to_text.weight)  # starts as the last item exactly (a normalised mix cannot)

    def objective(self) -> Objective:
        """Causal blocks give a state per position: a target at every position ("shift")."""
        return Objective("shift", loss=self.config.loss)

    def encode(self, items: Tensor, timestamps: Tensor | None = None, query_times: Tensor | None = None, *,
               last_only: bool = False) -> Tensor:
        """[batch, seq_len] -> [batch, seq_len, dim] (dim: hidden, or the language model's with item_tower
        "text"), the state at t depending only on items[:, :t+1]; [batch, 1, dim] with `last_only`."""
        self.check_history(items, timestamps)
        padding = items == 0  # [batch, seq_len]
        x = self._adapt(self.item_cache[items]) * (~padding).unsqueeze(-1)  # [batch, seq_len, hidden]
        x = self.emb_dropout(x + self.pos_emb(positions_from_first_item(padding))) * (~padding).unsqueeze(-1)
        mask = attention_bias(padding, causal=True, dtype=x.dtype)  # [batch, 1, seq_len, seq_len]
        for depth, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and depth == len(self.blocks) - 1)
        x = self.final_norm(x)
        if self.config.item_tower == "text":
            x = self.to_text(x)  # [batch, seq_len or 1, lm_dim]
            if self.config.last_item_residual:
                last = self.item_cache[items[:, -x.shape[1]:]]  # each state's own (last) item; unit vectors
                weight = self.config.residual_weight
                x = x + last if weight is None else F.normalize(x, dim=-1) + weight * last
        return F.normalize(x, dim=-1) / self.config.temperature if self.config.similarity == "cosine" else x

    def user_vector(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """[batch, seq_len] history (oldest first) -> [batch, dim] query vector."""
        return self.encode(items, last_only=True)[:, -1, :]

    def item_vectors(self) -> Tensor:
        """[n_items + 1, dim], row 0 (padding) zero. A row depends only on its item's text."""
        if self.config.item_tower == "text":
            return F.normalize(self.item_cache, dim=-1)  # the language model's own vectors; row 0 zero
        vectors = self._adapt(self.item_cache)
        if self.config.similarity == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        return vectors * (torch.arange(vectors.shape[0], device=vectors.device) > 0).unsqueeze(-1).to(vectors.dtype)

    def _adapt(self, text_vectors: Tensor) -> Tensor:
        # Unit-norm sentence vectors have components of ~1/sqrt(dim): rescale so the adapter sees unit variance.
        return self.adapter(text_vectors * math.sqrt(text_vectors.shape[-1]))
