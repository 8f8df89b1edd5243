"""Id maps: 1..N in id order, 0 reserved for padding, null ids refused."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.data import schema
from recsys.data.ids import build_item_map, build_user_map
from recsys.errors import DataError


def test_maps_are_sorted_and_start_at_one() -> None:
    items = build_item_map(pl.Series([30, 10, 20, 10]))
    assert items.rows() == [(1, 10), (2, 20), (3, 30)]
    assert items.schema[schema.ITEM_IDX] == pl.Int32
    users = build_user_map(pl.Series(["bob", "alice", "bob"]))
    assert users.rows() == [(1, "alice"), (2, "bob")]


def test_null_ids_are_refused() -> None:
    with pytest.raises(DataError, match="item_id: 1 null ids cannot be mapped"):
        build_item_map(pl.Series([3, None, 1]))
