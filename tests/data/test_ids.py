"""Id maps: 1..N in id order, 0 reserved for padding, round trips, saved as Parquet."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import schema
from recsys.data.ids import build_item_map, build_user_map, load_id_maps, save_id_maps, to_internal, to_original
from recsys.errors import DataError, UnknownIdError


def test_maps_are_sorted_and_start_at_one() -> None:
    items = build_item_map(pl.Series([30, 10, 20, 10]))
    assert items.rows() == [(1, 10), (2, 20), (3, 30)]
    assert items.schema[schema.ITEM_IDX] == pl.Int32
    users = build_user_map(pl.Series(["bob", "alice", "bob"]))
    assert users.rows() == [(1, "alice"), (2, "bob")]


def test_round_trip_and_unknown_ids() -> None:
    items = build_item_map(pl.Series([500, 7, 42]))
    original = pl.Series([42, 7, 500, 42])
    internal = to_internal(original, items)
    assert internal.to_list() == [2, 1, 3, 2]
    assert to_original(internal, items).to_list() == original.to_list()
    with pytest.raises(UnknownIdError, match="item_id 99"):
        to_internal(pl.Series([99]), items)
    with pytest.raises(UnknownIdError, match=r"item_idx 0 is not in 1\.\.3"):
        to_original(pl.Series([0]), items)


def test_saved_maps_round_trip(tmp_path: Path) -> None:
    users, items = build_user_map(pl.Series([3, 1])), build_item_map(pl.Series(["x", "y"]))
    save_id_maps(tmp_path, users, items)
    loaded = load_id_maps(tmp_path)
    assert loaded[0].equals(users) and loaded[1].equals(items)
    with pytest.raises(DataError, match="id map not found"):
        load_id_maps(tmp_path / "missing")
