"""Out-of-core preparation (data.streaming): the same frames, splits, statistics and errors as in memory."""

from __future__ import annotations

import gzip
import re
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import io as io_module
from recsys.data import prepare as prepare_module
from recsys.data import streaming
from recsys.data.dataset import PreparedDataset
from recsys.data.io import Member, spool_member
from recsys.data.movielens import DAT
from recsys.data.prepare import (
    build_dataset,
    build_out_of_core,
    dataset_stats,
    fingerprint,
    prepare_dataset,
    source_members,
)
from recsys.data.presets import resolve_preprocessing
from recsys.data.splits import make_split
from recsys.errors import DataError

from .conftest import TINY_MOVIES, TINY_RATINGS, write_tiny_ml1m

FRAMES = ("sequences", "user_map", "item_map", "items")


def both_ways(cfg: DataConfig, rows_per_bucket: int) -> tuple[PreparedDataset, PreparedDataset]:
    """The dataset built in memory and out of core (buckets of `rows_per_bucket` rows, so several of them),
    after checking that both report the same progress stages."""
    preprocessing = resolve_preprocessing(cfg)
    members = source_members(cfg)
    fp = fingerprint(cfg, members, preprocessing)
    stages: tuple[list[str], list[str]] = ([], [])
    in_memory = build_dataset(cfg, preprocessing, fp, stages[0].append)
    out_of_core = build_out_of_core(cfg, members, preprocessing, fp, stages[1].append, rows_per_bucket=rows_per_bucket)
    assert stages[1] == stages[0] == ["read", "filter", "ids", "sequences", "done"]
    return in_memory, out_of_core


def assert_identical(in_memory: PreparedDataset, out_of_core: PreparedDataset, cfg: DataConfig) -> None:
    for name in FRAMES:
        expected, got = getattr(in_memory, name), getattr(out_of_core, name)
        assert got.schema == expected.schema, name
        assert got.equals(expected), name
    assert dataset_stats(out_of_core) == dataset_stats(in_memory)
    assert out_of_core.text_columns == in_memory.text_columns
    split_a, split_b = make_split(in_memory, cfg), make_split(out_of_core, cfg)
    for part in ("train", "valid", "test"):
        assert getattr(split_b, part).equals(getattr(split_a, part)), part


# ---- the shipped datasets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [
    {},
    {"preset": "papers", "split": "temporal"},
    {"core": "iterated", "min_item_interactions": 10, "min_user_interactions": 10},
    {"max_history": 50, "min_rating": 3.5},
], ids=["raw", "papers-temporal", "iterated-core", "max-history-min-rating"])
def test_ml_latest_small_is_identical(settings: dict[str, object], tmp_path: Path) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path), **settings)  # type: ignore[arg-type]
    in_memory, out_of_core = both_ways(cfg, rows_per_bucket=20_000)  # 100,836 rows: 5 buckets
    assert_identical(in_memory, out_of_core, cfg)


@pytest.mark.parametrize(("name", "preset", "rows"), [("ml-1m", "papers", 150_000), ("ml-100k", "raw", 15_000)])
def test_shared_releases_are_identical(name: str, preset: str, rows: int, shared_data: Path, tmp_path: Path) -> None:
    if not (shared_data / name).is_dir():
        pytest.skip(f"{name} not in {shared_data}")
    cfg = DataConfig(name=name, path=str(shared_data / name), preset=preset, cache_dir=str(tmp_path))
    in_memory, out_of_core = both_ways(cfg, rows)  # ml-1m: a gzipped `::` file, spooled a chunk at a time
    assert_identical(in_memory, out_of_core, cfg)


# ---- a log with duplicates and ties ------------------------------------------------------------------------


def synthetic_csv_release(folder: Path, seed: int = 0) -> Path:
    """ratings.csv in ml-latest-small's layout, in no particular order, where many rows share a timestamp
    (ties keep file order) and about a tenth repeat an earlier (user, item, timestamp) with another rating."""
    rng = np.random.default_rng(seed)
    n = 4_000
    frame = pl.DataFrame({
        # power-law users and items, so that the k-core's rounds drop some of them and keep others
        "userId": np.minimum(rng.zipf(1.3, n), 200), "movieId": np.minimum(rng.zipf(1.2, n), 300) * 7,
        "rating": rng.integers(1, 11, n) / 2, "timestamp": rng.integers(0, 30, n) * 1000,
    })
    repeated = frame.sample(400, seed=seed).with_columns(rating=pl.lit(0.5))
    frame = pl.concat([frame, repeated]).sample(fraction=1.0, shuffle=True, seed=seed)
    folder.mkdir(parents=True)
    frame.write_csv(folder / "ratings.csv")
    items = pl.DataFrame({"movieId": np.arange(1, 301) * 7}).with_columns(
        title=pl.format("Film {} (1999)", "movieId"), genres=pl.lit("Drama|Comedy"))
    items.write_csv(folder / "movies.csv")
    return folder


@pytest.mark.parametrize("duplicates", ["drop_exact", "keep"])
def test_duplicates_and_ties_in_many_buckets(duplicates: str, tmp_path: Path) -> None:
    folder = synthetic_csv_release(tmp_path / "ml-latest-small")
    cfg = DataConfig(path=str(folder), cache_dir=str(tmp_path / "cache"),
                     duplicates=duplicates,  # type: ignore[arg-type]
                     min_item_interactions=10, min_user_interactions=10, core="iterated")
    in_memory, out_of_core = both_ways(cfg, rows_per_bucket=150)  # about 20 buckets, one user far bigger than one
    assert in_memory.duplicates_dropped > 300 if duplicates == "drop_exact" else in_memory.duplicates_dropped == 0
    assert_identical(in_memory, out_of_core, cfg)


def test_zipped_release_streams_through_prepare_dataset(tmp_path: Path) -> None:
    folder = synthetic_csv_release(tmp_path / "ml-latest-small")
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for file in folder.iterdir():
            out.write(file, f"ml-latest-small/{file.name}")
    cfg = DataConfig(path=str(archive), cache_dir=str(tmp_path / "cache"), streaming=True)
    streamed = prepare_dataset(cfg)
    in_memory = prepare_dataset(cfg.model_copy(update={"streaming": False}), use_cache=False)
    assert_identical(in_memory, streamed, cfg)
    # Only the dataset's folder is left in the cache: the work folder went with the run.
    left = [p.name for p in (tmp_path / "cache" / "prepared").iterdir()]
    assert left == [f"ml-latest-small-{streamed.fingerprint[:16]}"]


def test_spooling_replaces_separators_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io_module, "_CHUNK", 5)  # every `::` and line end falls somewhere between chunks
    (tmp_path / "ratings.dat.gz").write_bytes(gzip.compress(TINY_RATINGS.encode()))
    copy = spool_member(Member(tmp_path, "ratings.dat.gz", in_zip=False), DAT, tmp_path / "plain.txt")
    assert copy.read_text() == TINY_RATINGS.replace("::", "\t")


# ---- choosing the path, and bad input ----------------------------------------------------------------------


def test_auto_streams_large_files_only(tiny_ml1m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(name="ml-1m", path=str(tiny_ml1m), cache_dir=str(tmp_path), min_user_interactions=1)
    members = source_members(cfg)
    assert not streaming.wants_streaming(cfg, members)
    assert not streaming.wants_streaming(cfg.model_copy(update={"streaming": False}), members)
    assert streaming.wants_streaming(cfg.model_copy(update={"streaming": True}), members)
    monkeypatch.setattr(streaming, "AUTO_THRESHOLD_BYTES", len(TINY_RATINGS))
    assert streaming.wants_streaming(cfg, members)
    # ...and then prepare_dataset takes the out-of-core path, to the same result.
    monkeypatch.setattr(prepare_module, "build_dataset", None)  # would fail if called
    ds = prepare_dataset(cfg, use_cache=False)
    assert ds.sequences.rows() == [(1, [3, 2, 1], [50, 100, 100]), (2, [1, 3, 2], [10, 20, 30]),
                                   (3, [4, 1, 2], [5, 6, 7])]
    assert not tmp_path.joinpath("prepared").exists()  # use_cache=False: the work went to the system's tmp


def custom_log(folder: Path, seed: int = 1) -> pl.DataFrame:
    """A custom log with text user ids, integer item ids, ratings and fractional timestamps (ties and repeats)."""
    rng = np.random.default_rng(seed)
    n = 3_000
    return pl.DataFrame({
        "u": [f"user{x}" for x in np.minimum(rng.zipf(1.3, n), 100)], "i": np.minimum(rng.zipf(1.2, n), 200),
        "r": rng.integers(1, 6, n) * 1.0, "t": rng.integers(0, 50, n) * 1.5,
    })


@pytest.mark.parametrize("file", ["log.csv", "log.parquet"])
def test_custom_log_is_identical(file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = custom_log(tmp_path)
    frame.write_csv(tmp_path / "log.csv")
    frame.write_parquet(tmp_path / "log.parquet")
    pl.DataFrame({"i": [1, 2, 3], "name": ["one", "two", "three"]}).write_csv(tmp_path / "items.csv")
    cfg = DataConfig(name="custom", interactions_file=str(tmp_path / file), items_file=str(tmp_path / "items.csv"),
                     user_column="u", item_column="i", timestamp_column="t", rating_column="r", min_rating=2.0,
                     min_item_interactions=5, core="iterated", cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(prepare_module, "read_custom", None)  # the out-of-core path must not read it in memory
    preprocessing, members = resolve_preprocessing(cfg), source_members(cfg)
    fp = fingerprint(cfg, members, preprocessing)
    out_of_core = build_out_of_core(cfg, members, preprocessing, fp, rows_per_bucket=300)
    monkeypatch.undo()
    in_memory = build_dataset(cfg, preprocessing, fp)
    assert in_memory.user_map.schema["user_id"] == pl.String and in_memory.items.columns[-1] == "name"
    assert_identical(in_memory, out_of_core, cfg)
    with pytest.raises(DataError, match=r"^min_rating=2\.0: the interactions have no ratings"):
        build_out_of_core(cfg.model_copy(update={"rating_column": None}), members, preprocessing, fp)


def test_custom_logs_only_memory_can_read_go_there(tmp_path: Path) -> None:
    # ISO-8601 times parse in memory; a bad line is named by the in-memory reader, whatever data.streaming says.
    (tmp_path / "iso.csv").write_text("user_id,item_id,timestamp\n1,2,2024-05-01T12:30:00\n1,3,2024-05-02T00:00:00\n")
    iso = DataConfig(name="custom", interactions_file=str(tmp_path / "iso.csv"), streaming=True,
                     min_user_interactions=1)
    assert prepare_dataset(iso, use_cache=False).sequences["timestamps"].to_list() == [[1714566600, 1714608000]]
    (tmp_path / "bad.csv").write_text("user_id,item_id,timestamp\n1,2,3\n1,,4\n")
    bad = iso.model_copy(update={"interactions_file": str(tmp_path / "bad.csv")})
    assert same_error(bad).endswith("bad.csv: line 3: column 'item_id' is empty")


def test_basket_log_refuses_forced_streaming(tmp_path: Path) -> None:
    log = tmp_path / "orders.csv"
    log.write_text("user_id,item_id,order_number\n1,2,1\n")
    cfg = DataConfig(name="custom", interactions_file=str(log), order_number_column="order_number", streaming=True)
    with pytest.raises(DataError, match=r"^data\.streaming=true: .*orders\.csv is a basket log, read in memory"):
        prepare_dataset(cfg)
    assert not streaming.wants_streaming(cfg.model_copy(update={"streaming": "auto"}), source_members(cfg))


def same_error(cfg: DataConfig) -> str:
    """The message of the DataError both paths raise for `cfg`, after checking that they agree."""
    with pytest.raises(DataError) as in_memory:
        prepare_dataset(cfg.model_copy(update={"streaming": False}), use_cache=False)
    with pytest.raises(DataError) as out_of_core:
        prepare_dataset(cfg.model_copy(update={"streaming": True}), use_cache=False)
    assert str(out_of_core.value) == str(in_memory.value)
    assert "\n" not in str(out_of_core.value)
    return str(out_of_core.value)


@pytest.mark.parametrize(("ratings", "expected"), [
    (TINY_RATINGS + "4::4x::3::200\n", r"ratings\.dat: line 10: column 'item_id': not a number: '4x'"),
    (TINY_RATINGS + "4::40::3\n", r"ratings\.dat: line 10: expected 4 fields separated by '::', field 'timestamp'"),
    ("1,20,5,100\n", r"ratings\.dat: line 1: expected 4 fields separated by '::', found 1 \(wrong separator\?\)"),
])
def test_bad_lines_are_the_same_one_line_errors(ratings: str, expected: str, tmp_path: Path) -> None:
    folder = write_tiny_ml1m(tmp_path / "ml-1m", ratings=ratings, movies=TINY_MOVIES)
    cfg = DataConfig(name="ml-1m", path=str(folder), min_user_interactions=1)
    assert re.search(expected, same_error(cfg))


def test_bad_csv_value_and_emptied_filters(tmp_path: Path) -> None:
    folder = synthetic_csv_release(tmp_path / "ml-latest-small")
    good = DataConfig(path=str(folder))
    ratings = (folder / "ratings.csv").read_text()
    (folder / "ratings.csv").write_text(ratings.splitlines()[0] + "\n")
    assert same_error(good).endswith("ratings.csv: no interactions in this file (no data rows)")
    (folder / "ratings.csv").write_text(ratings)
    assert "min_item_interactions=9999" in same_error(good.model_copy(update={"min_item_interactions": 9999}))
    assert "min_rating=9.0" in same_error(good.model_copy(update={"min_rating": 9.0}))
    text = (folder / "ratings.csv").read_text().splitlines()
    text[7] = "3,,4.0,1000"
    (folder / "ratings.csv").write_text("\n".join(text) + "\n")
    assert same_error(good).endswith("ratings.csv: line 8: column 'movieId' is empty")
