"""A user's own log: CSV / Parquet, custom column names, numeric or ISO timestamps, an item table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.prepare import prepare_dataset
from recsys.errors import DataError

LOG = """\
customer;sku;when;stars
alice;B-2;2024-01-02T10:00:00;5
alice;A-1;2024-01-01T09:00:00;4
bob;A-1;2024-01-03T12:00:00;3
bob;B-2;2024-01-03T12:00:00;1
"""
ITEMS = """\
sku;name;colour;price
A-1;Blue mug;blue;9
B-2;Red mug;red;8
C-3;Unused;green;1
"""


def custom_cfg(log: Path, tmp_path: Path, **overrides: object) -> DataConfig:
    settings: dict[str, object] = {
        "name": "custom",
        "interactions_file": str(log),
        "user_column": "customer",
        "item_column": "sku",
        "timestamp_column": "when",
        "rating_column": "stars",
        "separator": ";",
        "min_user_interactions": 1,
        "cache_dir": str(tmp_path / "cache"),
    }
    return DataConfig(**(settings | overrides))  # type: ignore[arg-type]


def test_csv_with_custom_columns_iso_times_and_items(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text(LOG)
    (tmp_path / "items.csv").write_text(ITEMS)
    cfg = custom_cfg(
        tmp_path / "log.csv", tmp_path, items_file=str(tmp_path / "items.csv"), text_columns=("name", "colour")
    )
    ds = prepare_dataset(cfg)
    assert ds.user_map.rows() == [(1, "alice"), (2, "bob")]
    assert ds.item_map.rows() == [(1, "A-1"), (2, "B-2")]
    assert ds.sequences[schema.ITEMS].to_list() == [[1, 2], [1, 2]]  # bob's tie keeps file order
    assert ds.sequences[schema.TIMESTAMPS].to_list()[0] == [1704099600, 1704189600]
    assert ds.items.rows() == [(1, "A-1", "Blue mug", "blue"), (2, "B-2", "Red mug", "red")]
    assert ds.text_columns == ("name", "colour")
    high = prepare_dataset(custom_cfg(tmp_path / "log.csv", tmp_path, min_rating=4.0))
    assert high.n_interactions == 2 and high.n_users == 1


def test_parquet_with_datetimes_and_integer_ids(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "u": [10, 10, 20],
            "i": [7, 8, 7],
            "t": [datetime(2024, 1, 2), datetime(2024, 1, 1), datetime(2024, 1, 3)],
        }
    )
    frame.write_parquet(tmp_path / "log.parquet")
    cfg = DataConfig(
        name="custom", interactions_file=str(tmp_path / "log.parquet"), user_column="u", item_column="i",
        timestamp_column="t", min_user_interactions=1, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    ds = prepare_dataset(cfg)
    assert ds.user_map.schema[schema.USER_ID] == pl.Int64
    assert ds.sequences[schema.ITEMS].to_list() == [[2, 1], [1]]
    assert ds.items.columns == [schema.ITEM_IDX, schema.ITEM_ID]


def test_numeric_timestamps_as_text(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n1,5,20.7\n1,6,10\n")
    ds = prepare_dataset(
        DataConfig(name="custom", interactions_file=str(tmp_path / "log.csv"), min_user_interactions=1)
    )
    assert ds.sequences.rows() == [(1, [2, 1], [10, 20])]


def test_bad_custom_input(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text(LOG.replace("2024-01-03T12:00:00;3", "yesterday;3"))
    with pytest.raises(DataError, match=r"log\.csv: line 4: column 'when': not a number or ISO datetime: 'yesterday'"):
        prepare_dataset(custom_cfg(log, tmp_path))
    log.write_text(LOG)
    with pytest.raises(DataError, match=r"log\.csv: missing column 'customer' \(wrong separator\? using ','\)"):
        prepare_dataset(custom_cfg(log, tmp_path, separator=","))
    with pytest.raises(DataError, match=r"missing column 'user'"):
        prepare_dataset(custom_cfg(log, tmp_path, user_column="user"))
    log.write_text(LOG.replace(";5\n", ";five\n"))
    with pytest.raises(DataError, match=r"line 2: column 'stars': not a number: 'five'"):
        prepare_dataset(custom_cfg(log, tmp_path))
    with pytest.raises(DataError, match=r"missing\.csv: no such file"):
        prepare_dataset(custom_cfg(tmp_path / "missing.csv", tmp_path))
    with pytest.raises(DataError, match="needs interactions_file"):
        prepare_dataset(DataConfig(name="custom"))
