"""Leave-one-out and global temporal splits on hand-checked sequences."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.dataset import PreparedDataset
from recsys.data.splits import leave_one_out, make_split, temporal_split
from recsys.errors import DataError

SEQUENCE_SCHEMA = {schema.USER_IDX: pl.Int32, schema.ITEMS: pl.List(pl.Int32), schema.TIMESTAMPS: pl.List(pl.Int64)}
EVAL_SCHEMA = pl.Schema({schema.USER_IDX: pl.Int32, schema.HISTORY: pl.List(pl.Int32),
                         schema.HISTORY_TIMESTAMPS: pl.List(pl.Int64), schema.TARGET: pl.Int32,
                         schema.TARGET_TIMESTAMP: pl.Int64})
# rows below: (user, items, their timestamps) and (user, history, its timestamps, target, its timestamp)


def sequences(rows: list[tuple[int, list[int], list[int]]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SEQUENCE_SCHEMA, orient="row")


SEQS = sequences(
    [
        (1, [1, 2, 3, 4], [1, 2, 8, 9]),
        (2, [5, 6], [3, 10]),  # only 2 items: trains, never evaluated under leave-one-out
        (3, [7, 8, 9], [5, 6, 7]),
    ]
)


def test_leave_one_out() -> None:
    split = leave_one_out(SEQS)
    assert split.kind == "leave_one_out"
    assert split.train.rows() == [(1, [1, 2], [1, 2]), (2, [5, 6], [3, 10]), (3, [7], [5])]
    assert split.valid.rows() == [(1, [1, 2], [1, 2], 3, 8), (3, [7], [5], 8, 6)]
    assert split.test.rows() == [(1, [1, 2, 3], [1, 2, 8], 4, 9), (3, [7, 8], [5, 6], 9, 7)]
    assert split.valid.schema == EVAL_SCHEMA and split.test.schema == EVAL_SCHEMA
    assert split.train.schema == pl.Schema(SEQUENCE_SCHEMA)


def test_temporal_split_cuts_globally() -> None:
    # 9 timestamps 1,2,3,5,6,7,8,9,10: the 0.5 'lower' quantile is 6, the 0.8 one is 8.
    split = temporal_split(SEQS, 0.5, 0.8)
    assert split.kind == "temporal"
    assert split.train.rows() == [(1, [1, 2], [1, 2]), (2, [5], [3]), (3, [7], [5])]
    # valid: only user 3 has an interaction in [6, 8); user 1's next is at 8, user 2's at 10.
    assert split.valid.rows() == [(3, [7], [5], 8, 6)]
    # test: history before 8, target = first at/after 8; user 3 has nothing at/after 8.
    assert split.test.rows() == [(1, [1, 2], [1, 2], 3, 8), (2, [5], [3], 6, 10)]
    assert split.test.schema == EVAL_SCHEMA


def test_temporal_split_skips_users_without_history() -> None:
    seqs = sequences([(1, [1, 2], [1, 2]), (2, [3, 4], [9, 10])])
    split = temporal_split(seqs, 0.5, 0.5)  # both cuts at t=2
    assert split.train.rows() == [(1, [1], [1])]
    assert split.test.rows() == [(1, [1], [1], 2, 2)]  # user 2 arrives after the cut: no history, skipped
    with pytest.raises(DataError, match="valid_quantile <= test_quantile"):
        temporal_split(seqs, 0.9, 0.5)


def test_make_split_dispatches_on_config() -> None:
    empty = pl.DataFrame()
    ds = PreparedDataset("tiny", "raw", SEQS, empty, empty, empty, "fp")
    assert make_split(ds, DataConfig()).kind == "leave_one_out"
    split = make_split(ds, DataConfig(split="temporal", valid_quantile=0.5, test_quantile=0.8))
    assert split.valid.rows() == [(3, [7], [5], 8, 6)]


def test_leave_one_out_on_ml1m(ml1m_raw: PreparedDataset) -> None:
    split = leave_one_out(ml1m_raw.sequences)
    assert split.test.height == split.valid.height == 6_040
    first = ml1m_raw.sequences.row(0, named=True)
    items, times = first[schema.ITEMS], first[schema.TIMESTAMPS]
    assert split.test.row(0) == (1, items[:-1], times[:-1], items[-1], times[-1])
    assert int(split.train[schema.ITEMS].list.len().sum()) == 1_000_209 - 2 * 6_040
