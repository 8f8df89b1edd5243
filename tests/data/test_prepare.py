"""prepare_dataset: real counts, presets, the item table, the cache and its atomicity."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.config import DataConfig
from recsys.data import prepare as prepare_module
from recsys.data import schema
from recsys.data.dataset import PreparedDataset
from recsys.data.prepare import dataset_stats, prepare_dataset, prepared_dir
from recsys.data.presets import resolve_preprocessing
from recsys.errors import DataError

from .conftest import TINY_RATINGS


def counts(ds: PreparedDataset) -> tuple[int, int, int]:
    return ds.n_users, ds.n_items, ds.n_interactions


# ---- real data ------------------------------------------------------------------------------------------


def test_ml1m_raw_and_papers_counts(ml1m_raw: PreparedDataset, ml1m_papers: PreparedDataset) -> None:
    assert counts(ml1m_raw) == (6_040, 3_706, 1_000_209)
    assert counts(ml1m_papers) == (6_040, 3_416, 999_611)
    assert ml1m_papers.preset == "papers" and ml1m_raw.fingerprint != ml1m_papers.fingerprint


def test_ml1m_sequences_follow_the_raw_file(ml1m_raw: PreparedDataset, shared_data: Path) -> None:
    from recsys.data.io import open_source
    from recsys.data.movielens import READERS

    raw = READERS["ml-1m"].read(open_source(shared_data / "ml-1m")).interactions
    expected = raw.filter(pl.col(schema.USER_ID) == 1).sort(schema.TIMESTAMP, schema.ROW)[schema.ITEM_ID].to_list()
    item_ids = dict(ml1m_raw.item_map.iter_rows())
    first = ml1m_raw.sequences.row(0, named=True)
    assert [item_ids[i] for i in first[schema.ITEMS]] == expected
    assert first[schema.TIMESTAMPS] == sorted(first[schema.TIMESTAMPS])
    assert ml1m_raw.items.height == ml1m_raw.n_items
    assert ml1m_raw.items.columns == ["item_idx", "item_id", "title", "year", "genres"]
    assert ml1m_raw.items.row(0) == (1, 1, "Toy Story", 1995, ["Animation", "Children's", "Comedy"])
    assert ml1m_raw.text_columns == ("title", "year", "genres")


def test_ml1m_cached_reload_reads_no_raw_file(ml1m_raw: PreparedDataset, shared_data: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # What makes the reload fast (0.3 s, against seconds to parse ratings.dat), asserted as behaviour: a wall-clock
    # bound failed on a loaded machine.
    def no_raw_read(cfg: DataConfig) -> None:
        raise AssertionError(f"the cached reload read the raw files of {cfg.name}")

    monkeypatch.setattr(prepare_module, "read_raw", no_raw_read)
    again = prepare_dataset(DataConfig(name="ml-1m", path=str(shared_data / "ml-1m")))
    assert again.fingerprint == ml1m_raw.fingerprint and again.sequences.equals(ml1m_raw.sequences)


def test_ml100k_counts(shared_data: Path) -> None:
    ds = prepare_dataset(DataConfig(name="ml-100k", path=str(shared_data / "ml-100k")))
    assert counts(ds) == (943, 1_682, 100_000)


def test_embedded_ml_latest_small_is_the_default() -> None:
    ds = prepare_dataset(DataConfig())
    assert (ds.name, ds.preset) == ("ml-latest-small", "raw")
    assert counts(ds) == (610, 9_724, 100_836)
    stats = dataset_stats(ds)
    assert stats["users"] == 610 and stats["sequence_length"]["max"] == 2_698
    assert set(stats["sequence_length"]) == {"mean", "p50", "p90", "p99", "max"}
    assert stats["density"] == pytest.approx(100_836 / (610 * 9_724))


# ---- presets --------------------------------------------------------------------------------------------


def test_explicit_values_override_the_preset() -> None:
    papers = resolve_preprocessing(DataConfig(preset="papers"))
    assert (papers.min_user_interactions, papers.min_item_interactions) == (5, 5)
    custom = resolve_preprocessing(DataConfig(preset="papers", min_item_interactions=0, min_rating=4.0))
    assert (custom.min_item_interactions, custom.min_rating) == (0, 4.0)
    with pytest.raises(DataError, match=r"preset 'paper' is unknown \(known: raw, papers\)"):
        resolve_preprocessing(DataConfig(preset="paper"))


# ---- tiny releases: cache behaviour -------------------------------------------------------------------


def tiny_cfg(folder: Path, cache: Path, **overrides: object) -> DataConfig:
    settings: dict[str, object] = {
        "name": "ml-1m",
        "path": str(folder),
        "cache_dir": str(cache),
        "min_user_interactions": 1,
    }
    return DataConfig(**(settings | overrides))  # type: ignore[arg-type]


def test_tiny_release_end_to_end(tiny_ml1m: Path, tmp_path: Path) -> None:
    ds = prepare_dataset(tiny_cfg(tiny_ml1m, tmp_path / "cache"))
    # items 10, 20, 30, 40 -> 1, 2, 3, 4. User 1: 30@50, then 20 and 10 both @100 in file order.
    assert ds.sequences.rows() == [
        (1, [3, 2, 1], [50, 100, 100]),
        (2, [1, 3, 2], [10, 20, 30]),
        (3, [4, 1, 2], [5, 6, 7]),
    ]
    assert ds.user_map.rows() == [(1, 1), (2, 2), (3, 3)]
    assert ds.items[schema.TITLE].to_list() == ["Toy Story", "Heat", "Café au lait", "Untitled"]


def test_cache_hit_reuses_files(tiny_ml1m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg(tiny_ml1m, tmp_path / "cache")
    first = prepare_dataset(cfg)
    folder = prepared_dir(cfg, first.fingerprint)
    assert sorted(p.name for p in folder.iterdir()) == [
        "item_map.parquet", "items.parquet", "meta.json", "sequences.parquet", "user_map.parquet"
    ]  # fmt: skip

    def fail(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(prepare_module, "build_dataset", fail)
    second = prepare_dataset(cfg)
    assert second.fingerprint == first.fingerprint and second.sequences.equals(first.sequences)
    assert second.items.equals(first.items)


def test_changed_setting_or_file_rebuilds(tiny_ml1m: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    base = prepare_dataset(tiny_cfg(tiny_ml1m, cache))
    stricter = prepare_dataset(tiny_cfg(tiny_ml1m, cache, min_item_interactions=3))
    assert stricter.fingerprint != base.fingerprint
    assert stricter.n_items == 2  # items 30 (2 ratings) and 40 (1) go
    (tiny_ml1m / "ratings.dat").write_text(TINY_RATINGS + "4::40::3::200\n")
    changed = prepare_dataset(tiny_cfg(tiny_ml1m, cache))
    assert changed.fingerprint != base.fingerprint and changed.n_users == 4
    assert len(list((cache / "prepared").iterdir())) == 3


def test_failed_run_leaves_the_cache_alone(tiny_ml1m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    good = prepare_dataset(tiny_cfg(tiny_ml1m, cache))
    (tiny_ml1m / "ratings.dat").write_text(TINY_RATINGS + "4::4x::3::200\n")
    with pytest.raises(DataError, match=r"ratings\.dat: line 10: column 'item_id': not a number: '4x'"):
        prepare_dataset(tiny_cfg(tiny_ml1m, cache))
    (tiny_ml1m / "ratings.dat").write_text(TINY_RATINGS)
    assert [p.name for p in (cache / "prepared").iterdir()] == [
        prepared_dir(tiny_cfg(tiny_ml1m, cache), good.fingerprint).name
    ]

    # A crash while writing the cache leaves neither a partial folder nor a temp folder behind.
    def broken_stats(_ds: PreparedDataset) -> dict[str, object]:
        raise OSError("disk full")

    monkeypatch.setattr(prepare_module, "dataset_stats", broken_stats)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(tiny_cfg(tiny_ml1m, cache, min_item_interactions=2))
    assert len(list((cache / "prepared").iterdir())) == 1


def test_incomplete_cache_folder_is_rebuilt(tiny_ml1m: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_ml1m, tmp_path / "cache")
    ds = prepare_dataset(cfg)
    folder = prepared_dir(cfg, ds.fingerprint)
    (folder / "sequences.parquet").write_bytes(b"garbage")
    again = prepare_dataset(cfg)
    assert again.sequences.equals(ds.sequences)
    assert pl.read_parquet(folder / "sequences.parquet").equals(ds.sequences)


def test_use_cache_false_writes_nothing(tiny_ml1m: Path, tmp_path: Path) -> None:
    prepare_dataset(tiny_cfg(tiny_ml1m, tmp_path / "cache"), use_cache=False)
    assert not (tmp_path / "cache").exists()


# ---- bad input ------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DataError, match=r"dataset 'ml-2m' is unknown \(known: ml-100k, ml-1m, .*custom\)"):
        prepare_dataset(DataConfig(name="ml-2m"))


def test_missing_raw_folder_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ml-20m: raw files not found in .*fetch_movielens\.py ml-20m"):
        prepare_dataset(DataConfig(name="ml-20m", cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_dataset(DataConfig(name="ml-1m", path=str(tmp_path / "nope")))


def test_empty_after_filtering_names_the_filter(tiny_ml1m: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no interactions left after min_user_interactions=4"):
        prepare_dataset(tiny_cfg(tiny_ml1m, tmp_path / "cache", min_user_interactions=4))
    assert not (tmp_path / "cache" / "prepared").exists() or not any((tmp_path / "cache" / "prepared").iterdir())
