"""The two shapes the rest of recsys consumes: a prepared dataset and a train/valid/test split."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from recsys.data import schema


@dataclass(frozen=True)
class PreparedDataset:
    """Interactions as per-user chronological sequences over internal ids.

    sequences: user_idx Int32 (1..n_users), items List[Int32] (1..n_items, oldest first; ties keep the
               source file's row order), timestamps List[Int64] (seconds).
    user_map:  user_idx Int32, user_id (the original id, its original dtype: Int64 or String).
    item_map:  item_idx Int32, item_id (likewise).
    items:     the item table: item_idx, item_id, and text columns (MovieLens: title, year, genres);
               one row per item of item_map, text columns null where unknown.
    """

    name: str
    preset: str
    sequences: pl.DataFrame
    user_map: pl.DataFrame
    item_map: pl.DataFrame
    items: pl.DataFrame
    fingerprint: str
    text_columns: tuple[str, ...] = field(default=())
    duplicates_dropped: int = 0
    """Rows of the raw log dropped as exact duplicates of an earlier row (same user, item and timestamp)."""

    @property
    def n_users(self) -> int:
        return self.user_map.height

    @property
    def n_items(self) -> int:
        """Number of real items; internal ids run 1..n_items and 0 is padding."""
        return self.item_map.height

    @property
    def n_interactions(self) -> int:
        return int(self.sequences[schema.ITEMS].list.len().sum())


@dataclass(frozen=True)
class Split:
    """What training, validation and testing see.

    train: user_idx, items List[Int32]: the sequences a model is trained on.
    valid, test: user_idx, history List[Int32], target Int32: one row per evaluated user; the model
               scores the full catalogue from `history`, items in `history` are excluded from the ranking
               (unless evaluation says otherwise) and `target` never is.
    """

    kind: str
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
