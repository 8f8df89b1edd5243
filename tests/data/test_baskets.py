"""Basket logs: repeats survive preparation, the timeline from order numbers and gaps, JSON baskets, and
one-line errors naming the file and column. Hand-built logs, plus small slices of the real repeat datasets
in shared/data (skipped, with the reason, where they are absent)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.prepare import prepare_dataset
from recsys.data.splits import make_split
from recsys.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
INSTACART = SHARED / "instacart-sample" / "df_sample.csv.gz"
TAFENG = SHARED / "tafeng" / "tafeng_merged.json.gz"
DAY, HOUR = 86_400, 3_600

# user 1: order 1 (day 0, 8h): a, b; order 2 (3 days later, 10h): b, c; order 3 (0 days later, 10h): b
BASKETS = """\
order_id,user_id,order_number,days_since_prior_order,order_hour_of_day,product_id
11,1,1,,8,a
11,1,1,,8,b
12,1,2,3,10,b
12,1,2,3,10,c
13,1,3,0,10,b
21,2,1,,0,a
21,2,1,,0,c
22,2,2,30,23,a
"""


def basket_config(path: Path, tmp_path: Path, **overrides: object) -> DataConfig:
    values: dict[str, object] = dict(
        name="custom", interactions_file=str(path), user_column="user_id", item_column="product_id",
        order_column="order_id", order_number_column="order_number", days_since_prior_column="days_since_prior_order",
        hour_column="order_hour_of_day", min_user_interactions=0, cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return DataConfig(**values)


def test_the_timeline_is_built_from_order_numbers_gaps_and_hours(tmp_path: Path) -> None:
    log = tmp_path / "orders.csv"
    log.write_text(BASKETS)
    ds = prepare_dataset(basket_config(log, tmp_path), use_cache=False)
    items = dict(zip(ds.item_map[schema.ITEM_ID], ds.item_map[schema.ITEM_IDX]))
    first = ds.sequences.row(0, named=True)
    # day * 86400 + hour * 3600 + the order number (which keeps orders 2 and 3, 0 days apart, two times)
    assert first[schema.TIMESTAMPS] == [8 * HOUR + 1, 8 * HOUR + 1, 3 * DAY + 10 * HOUR + 2, 3 * DAY + 10 * HOUR + 2,
                                        3 * DAY + 10 * HOUR + 3]
    # items of one order keep the file's order; b recurs in all three orders and every use is kept
    assert first[schema.ITEMS] == [items["a"], items["b"], items["b"], items["c"], items["b"]]
    second = ds.sequences.row(1, named=True)
    assert second[schema.TIMESTAMPS] == [1, 1, 30 * DAY + 23 * HOUR + 2]


def test_without_gaps_each_order_is_one_day(tmp_path: Path) -> None:
    log = tmp_path / "orders.csv"
    log.write_text(BASKETS)
    ds = prepare_dataset(basket_config(log, tmp_path, days_since_prior_column=None, hour_column=None),
                         use_cache=False)
    assert ds.sequences.row(0, named=True)[schema.TIMESTAMPS] == [1, 1, DAY + 2, DAY + 2, 2 * DAY + 3]


def test_repeats_survive_and_exact_duplicates_go_unless_kept(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    # item 7 three times: twice at t=10 (an exact duplicate), once at t=20 (a repeat)
    log.write_text("user_id,item_id,timestamp\n1,7,10\n1,7,10\n1,8,15\n1,7,20\n")
    cfg = DataConfig(name="custom", interactions_file=str(log), min_user_interactions=0,
                     cache_dir=str(tmp_path / "cache"))
    dropped = prepare_dataset(cfg, use_cache=False)
    assert dropped.sequences[schema.ITEMS].to_list() == [[1, 2, 1]] and dropped.duplicates_dropped == 1
    kept = prepare_dataset(cfg.model_copy(update={"duplicates": "keep"}), use_cache=False)
    assert kept.sequences[schema.ITEMS].to_list() == [[1, 1, 2, 1]] and kept.duplicates_dropped == 0
    assert kept.fingerprint != dropped.fingerprint  # the policy is part of the cache key


def test_bad_basket_values_are_one_line_errors_naming_file_and_column(tmp_path: Path) -> None:
    log = tmp_path / "orders.csv"
    log.write_text(BASKETS.replace("12,1,2,3,10,b", "12,1,2,,10,b").replace("12,1,2,3,10,c", "12,1,2,,10,c"))
    with pytest.raises(DataError, match=r"orders\.csv: column 'days_since_prior_order' is empty for user 1's order 2"):
        prepare_dataset(basket_config(log, tmp_path), use_cache=False)
    log.write_text(BASKETS.replace("13,1,3,0,10,b", "13,1,x,0,10,b"))
    with pytest.raises(DataError, match=r"orders\.csv: line 6: column 'order_number': not an integer: 'x'"):
        prepare_dataset(basket_config(log, tmp_path), use_cache=False)
    log.write_text(BASKETS)
    with pytest.raises(DataError, match=r"orders\.csv: missing column 'order_dow'"):
        prepare_dataset(basket_config(log, tmp_path, hour_column="order_dow"), use_cache=False)
    log.write_text(BASKETS.replace("13,1,3,0,10,b", "12,1,3,0,10,b"))
    with pytest.raises(DataError, match=r"column 'order_id': order '12' has rows of more than one"):
        prepare_dataset(basket_config(log, tmp_path), use_cache=False)
    with pytest.raises(ConfigError, match=r"duplicates: 'some' is not one of 'drop_exact', 'keep'"):
        DataConfig(duplicates="some")


def test_json_baskets_are_read_in_order_without_padding(tmp_path: Path) -> None:
    log = tmp_path / "baskets.json.gz"
    log.write_bytes(gzip.compress(json.dumps({"5": [[-1], [3, 4], [4], [3, 9, 4], [-1]]}).encode()))
    cfg = DataConfig(name="custom", interactions_file=str(log), order_number_column="order_number",
                     min_user_interactions=0, cache_dir=str(tmp_path / "cache"))
    ds = prepare_dataset(cfg, use_cache=False)
    ids = dict(zip(ds.item_map[schema.ITEM_IDX], ds.item_map[schema.ITEM_ID]))
    row = ds.sequences.row(0, named=True)
    assert [ids[i] for i in row[schema.ITEMS]] == [3, 4, 4, 3, 9, 4]
    assert row[schema.TIMESTAMPS] == [1, 1, DAY + 2, 2 * DAY + 3, 2 * DAY + 3, 2 * DAY + 3]


@pytest.mark.skipif(not INSTACART.is_file(), reason=f"the Instacart sample is not at {INSTACART}")
def test_an_instacart_slice_keeps_every_repeat_purchase(tmp_path: Path) -> None:
    rows = pl.read_csv(INSTACART, n_rows=3_000, infer_schema=False)
    rows = rows.filter(pl.col("user_id") != rows["user_id"][-1])  # the slice cuts its last user short
    log = tmp_path / "slice.csv"
    rows.write_csv(log)
    cfg = basket_config(log, tmp_path)
    ds = prepare_dataset(cfg, use_cache=False)
    assert ds.n_interactions == rows.height and ds.duplicates_dropped == 0
    # Instacart's `reordered` flag marks a product the user bought in an earlier order: those rows are the
    # repeats, and the prepared sequences hold exactly as many items seen earlier in the same sequence.
    repeats = sum(len(items) - len(set(items)) for items in ds.sequences[schema.ITEMS].to_list())
    assert repeats == int(rows["reordered"].cast(pl.Float64).sum())
    test = make_split(ds, cfg).test
    assert test.select(pl.col(schema.HISTORY).list.contains(pl.col(schema.TARGET)).any()).item()


@pytest.mark.skipif(not TAFENG.is_file(), reason=f"the Ta-Feng baskets are not at {TAFENG}")
def test_a_tafeng_slice_reads_as_one_day_per_basket(tmp_path: Path) -> None:
    baskets = json.loads(gzip.decompress(TAFENG.read_bytes()))
    users = list(baskets)[:50]
    log = tmp_path / "tafeng.json"
    log.write_text(json.dumps({u: baskets[u] for u in users}))
    cfg = DataConfig(name="custom", interactions_file=str(log), order_number_column="order_number",
                     min_user_interactions=0, cache_dir=str(tmp_path / "cache"))
    ds = prepare_dataset(cfg, use_cache=False)
    assert ds.n_users == 50 and ds.n_interactions == sum(len(b) for u in users for b in baskets[u])
    user = ds.user_map.filter(pl.col(schema.USER_ID) == int(users[0]))[schema.USER_IDX][0]
    times = ds.sequences.filter(pl.col(schema.USER_IDX) == user)[schema.TIMESTAMPS][0].to_list()
    assert sorted(set(times)) == [k * DAY + k + 1 for k in range(len(baskets[users[0]]))]
