"""Filters, k-cores, history truncation and chronological sequences on hand-checked frames."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.data import schema
from recsys.data.ids import dense_index
from recsys.data.sequences import build_sequences, filter_counts, filter_min_rating, keep_last
from recsys.errors import DataError


def log(rows: list[tuple[int, str, float, int]]) -> pl.DataFrame:
    """(user, item, rating, timestamp) rows -> interactions with the file row order."""
    frame = pl.DataFrame(rows, schema=[schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP], orient="row")
    return frame.with_row_index(schema.ROW)


def sequences_of(frame: pl.DataFrame) -> dict[int, list[str]]:
    """Sequences in original item ids, for readable assertions."""
    indexed = frame.with_columns(
        dense_index(schema.USER_ID).alias(schema.USER_IDX), dense_index(schema.ITEM_ID).alias(schema.ITEM_IDX)
    )
    names = dict(indexed.select(schema.ITEM_IDX, schema.ITEM_ID).unique().iter_rows())
    seqs = build_sequences(indexed)
    return {u: [names[i] for i in items] for u, items in seqs.select(schema.USER_IDX, schema.ITEMS).iter_rows()}


# Single pass vs k-core (min_user=3, min_item=2): e is rare -> u3 falls to 2 items and goes -> d falls to
# 1 user. The single pass stops there (d stays); the k-core also drops d, then u4 (2 items left).
KCORE = log(
    [(1, "a", 5, 1), (1, "b", 5, 2), (1, "c", 5, 3),
     (2, "a", 5, 1), (2, "b", 5, 2), (2, "c", 5, 3),
     (3, "c", 5, 1), (3, "d", 5, 2), (3, "e", 5, 3),
     (4, "d", 5, 1), (4, "a", 5, 2), (4, "b", 5, 3)]
)  # fmt: skip


def test_single_pass_filters_items_then_users_once() -> None:
    kept = filter_counts(KCORE, min_user_interactions=3, min_item_interactions=2, core="single")
    assert sequences_of(kept) == {1: ["a", "b", "c"], 2: ["a", "b", "c"], 3: ["d", "a", "b"]}


def test_iterated_core_repeats_until_stable() -> None:
    kept = filter_counts(KCORE, min_user_interactions=3, min_item_interactions=2, core="iterated")
    assert sequences_of(kept) == {1: ["a", "b", "c"], 2: ["a", "b", "c"]}


def test_sequences_are_chronological_with_file_order_tie_break() -> None:
    frame = log([(7, "x", 1, 100), (7, "y", 1, 100), (7, "z", 1, 50), (8, "y", 1, 100), (8, "x", 1, 100)])
    assert sequences_of(frame) == {1: ["z", "x", "y"], 2: ["y", "x"]}
    indexed = frame.with_columns(
        dense_index(schema.USER_ID).alias(schema.USER_IDX), dense_index(schema.ITEM_ID).alias(schema.ITEM_IDX)
    )
    seqs = build_sequences(indexed.reverse())  # input order must not matter: the row column decides
    assert seqs[schema.ITEMS].to_list() == [[3, 1, 2], [2, 1]]
    assert seqs[schema.TIMESTAMPS].to_list() == [[50, 100, 100], [100, 100]]
    assert seqs.schema == pl.Schema(
        {schema.USER_IDX: pl.Int32, schema.ITEMS: pl.List(pl.Int32), schema.TIMESTAMPS: pl.List(pl.Int64)}
    )


def test_keep_last_keeps_the_most_recent() -> None:
    frame = log([(1, "a", 1, 3), (1, "b", 1, 1), (1, "c", 1, 2), (2, "d", 1, 1)])
    assert sequences_of(keep_last(frame, 2)) == {1: ["c", "a"], 2: ["d"]}
    with pytest.raises(DataError, match="max_history=0"):
        keep_last(frame, 0)


def test_min_rating_and_empty_results_name_the_filter() -> None:
    frame = log([(1, "a", 5, 1), (1, "b", 2, 2), (2, "a", 3, 3)])
    assert filter_min_rating(frame, 3.0)[schema.ITEM_ID].to_list() == ["a", "a"]
    with pytest.raises(DataError, match=r"no interactions left after min_rating=6"):
        filter_min_rating(frame, 6.0)
    with pytest.raises(DataError, match=r"no interactions left after min_user_interactions=5"):
        filter_counts(frame, 5, 0)
    with pytest.raises(DataError, match=r"no interactions left after min_item_interactions=3"):
        filter_counts(frame, 0, 3)
    unrated = frame.with_columns(pl.lit(None, dtype=pl.Float32).alias(schema.RATING))
    with pytest.raises(DataError, match="no ratings"):
        filter_min_rating(unrated, 1.0)
