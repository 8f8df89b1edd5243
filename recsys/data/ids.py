"""Original ids <-> internal ids.

Internal item ids run 1..n_items and 0 is padding (SASRec's convention); user ids run 1..n_users. Both are
assigned in the sort order of the original ids, so the same interactions always give the same maps. The
maps are saved as Parquet next to the prepared sequences (`user_map.parquet`, `item_map.parquet`).
"""

from __future__ import annotations

import polars as pl

from recsys.data import schema
from recsys.errors import DataError


def dense_index(column: str) -> pl.Expr:
    """1..N in the sort order of `column`'s distinct values: the internal id of each row, without a join."""
    return pl.col(column).rank("dense").cast(pl.Int32)


def build_id_map(ids: pl.Series, id_name: str, idx_name: str) -> pl.DataFrame:
    """`idx_name` Int32 1..N and `id_name` (original dtype) for the distinct values of `ids`, sorted by id."""
    if ids.null_count():
        raise DataError(f"{id_name}: {ids.null_count()} null ids cannot be mapped")
    distinct = ids.unique().sort()
    return pl.DataFrame({idx_name: pl.int_range(1, distinct.len() + 1, dtype=pl.Int32, eager=True), id_name: distinct})


def build_user_map(ids: pl.Series) -> pl.DataFrame:
    """user_idx 1..n_users for the distinct user ids, in id order."""
    return build_id_map(ids, schema.USER_ID, schema.USER_IDX)


def build_item_map(ids: pl.Series) -> pl.DataFrame:
    """item_idx 1..n_items (0 stays padding) for the distinct item ids, in id order."""
    return build_id_map(ids, schema.ITEM_ID, schema.ITEM_IDX)
