"""Original ids <-> internal ids.

Internal item ids run 1..n_items and 0 is padding (SASRec's convention); user ids run 1..n_users. Both are
assigned in the sort order of the original ids, so the same interactions always give the same maps. The
maps are saved as Parquet next to the prepared sequences (`user_map.parquet`, `item_map.parquet`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.data import schema
from recsys.data.io import write_parquet_atomic
from recsys.errors import DataError, UnknownIdError


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


def id_map_of(frame: pl.LazyFrame, id_name: str, idx_name: str) -> pl.DataFrame:
    """The (idx, id) pairs already assigned in `frame` (e.g. by `dense_index`), sorted by idx."""
    return frame.select(idx_name, id_name).unique().sort(idx_name).collect()


def to_internal(ids: pl.Series, id_map: pl.DataFrame) -> pl.Series:
    """Original ids -> internal ids; an id the map does not know is an UnknownIdError naming it."""
    id_name, idx_name = _names(id_map)
    frame = pl.DataFrame({id_name: ids.cast(id_map[id_name].dtype, strict=False)})
    mapped = frame.join(id_map, on=id_name, how="left", maintain_order="left")[idx_name]
    if mapped.null_count():
        unknown = ids.filter(mapped.is_null())[0]
        raise UnknownIdError(f"{id_name} {unknown!r} is not in the id map ({id_map.height} known ids)")
    return mapped.alias(idx_name)


def to_original(idx: pl.Series, id_map: pl.DataFrame) -> pl.Series:
    """Internal ids -> original ids; 0 (padding) and out-of-range ids are an UnknownIdError."""
    id_name, idx_name = _names(id_map)
    frame = pl.DataFrame({idx_name: idx.cast(pl.Int32, strict=False)})
    mapped = frame.join(id_map, on=idx_name, how="left", maintain_order="left")[id_name]
    if mapped.null_count():
        unknown = idx.filter(mapped.is_null())[0]
        raise UnknownIdError(f"{idx_name} {unknown!r} is not in 1..{id_map.height}")
    return mapped


def save_id_maps(folder: str | Path, user_map: pl.DataFrame, item_map: pl.DataFrame) -> None:
    """Write user_map.parquet and item_map.parquet into `folder` (atomically, each)."""
    write_parquet_atomic(user_map, Path(folder) / "user_map.parquet")
    write_parquet_atomic(item_map, Path(folder) / "item_map.parquet")


def load_id_maps(folder: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(user_map, item_map) saved by `save_id_maps`; a missing file is a DataError naming it."""
    maps = []
    for name in ("user_map.parquet", "item_map.parquet"):
        path = Path(folder) / name
        if not path.is_file():
            raise DataError(f"{path}: id map not found")
        maps.append(pl.read_parquet(path))
    return maps[0], maps[1]


def _names(id_map: pl.DataFrame) -> tuple[str, str]:
    if schema.ITEM_IDX in id_map.columns:
        return schema.ITEM_ID, schema.ITEM_IDX
    return schema.USER_ID, schema.USER_IDX
