"""From a raw release (or a user's log) to a cached `PreparedDataset`.

`prepare_dataset` reads, filters, maps ids, builds sequences and attaches the item table, then caches the
result as Parquet under `<cache>/prepared/<name>-<fingerprint>/`. The fingerprint is a sha256 over the
content identity of every raw file read (sha256 of a file, CRC-32 and size of a zip entry), the resolved
preprocessing settings and FORMAT_VERSION, so a changed file or setting rebuilds and anything else reuses
the cache. A cache folder is built under a temporary name and renamed into place only when complete: a
failed or interrupted run leaves no partial cache and never replaces a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.dataset import PreparedDataset
from recsys.data.generic import custom_members, read_custom, read_items, scan_interactions
from recsys.data.ids import build_item_map, build_user_map, dense_index
from recsys.data.io import Member, Source, open_source
from recsys.data.movielens import MOVIELENS_TEXT_COLUMNS, READERS
from recsys.data.presets import Preprocessing, resolve_preprocessing
from recsys.data.raw import RawData
from recsys.data.sequences import build_sequences, drop_exact_duplicates, filter_counts, filter_min_rating, keep_last
from recsys.data.splits import MIN_EVALUATED_LENGTH
from recsys.data.streaming import stream_log, wants_streaming
from recsys.durable import folder_beside, publish_folder, remove_abandoned_folders
from recsys.errors import DataError

FORMAT_VERSION = 1
"""Bump when the prepared files change meaning or layout: every old cache then rebuilds."""
DUPLICATES_POLICY = "exact (user, item, timestamp) duplicates dropped, repeats at other times kept"
"""How duplicated rows are treated (see recsys.data.sequences), part of the cache key: a cache built before exact
duplicates were dropped, or under another policy, is not reused."""
REPEAT_TARGET_WARNING_SHARE = 0.2
"""At this share of test or validation targets that repeat the item just before them, prepare warns. Repeating
the last item then gets HR@1 of at least this share, near what SASRec reaches at HR@10 on ML-1M (0.2958 in the
README's benchmarks): the metrics would measure the repeat, not the model. Logs rich in real repeats stay far
below it (measured on the copies in shared/data: Instacart, 64% of rows a repurchase, 1.7% of test targets;
Ta-Feng 0.4%; MovieLens 0%), while a log with every event written twice, a second apart, gives 100%."""
EMBEDDED = Path(__file__).resolve().parent / "embedded"
"""Datasets shipped inside the package (ml-latest-small, whose licence allows redistribution)."""
CUSTOM = "custom"
KNOWN_DATASETS = (*READERS, CUSTOM)
FILES = ("sequences", "user_map", "item_map", "items")  # <name>.parquet in a prepared folder


# ---------------------------------------------------------------------------------------------------------
# Where things live


def cache_root(cache_dir: str | None = None) -> Path:
    """`cache_dir`, else $RECSYS_CACHE, else ~/.cache/recsys."""
    return Path(cache_dir or os.environ.get("RECSYS_CACHE") or Path.home() / ".cache" / "recsys").expanduser()


def raw_dir(name: str, cache_dir: str | None = None) -> Path:
    """The folder `data_scripts/fetch_movielens.py` unpacks a release into."""
    return cache_root(cache_dir) / "raw" / name


def locate_source(cfg: DataConfig) -> Source:
    """The folder or zip holding a MovieLens release: cfg.path, the embedded copy, or the raw-data folder."""
    check_name(cfg.name)
    if cfg.name == CUSTOM:
        raise DataError("dataset 'custom' has no release folder: set interactions_file (CLI: --from FILE)")
    if cfg.path:
        return open_source(cfg.path)
    if (EMBEDDED / cfg.name).is_dir():
        return open_source(EMBEDDED / cfg.name)
    folder = raw_dir(cfg.name, cfg.cache_dir)
    if not folder.is_dir():
        raise DataError(
            f"{cfg.name}: raw files not found in {folder}; get them with "
            f"`python data_scripts/fetch_movielens.py {cfg.name}` (or `... {cfg.name} --from PATH` for a local "
            f"zip or folder), or pass the folder as path / --from"
        )
    return open_source(folder)


def check_name(name: str) -> None:
    """A DataError listing the known datasets when `name` is not one of them."""
    if name not in KNOWN_DATASETS:
        raise DataError(f"dataset {name!r} is unknown (known: {', '.join(KNOWN_DATASETS)})")


def source_members(cfg: DataConfig) -> list[Member]:
    """Every raw file `prepare_dataset` reads for `cfg`."""
    check_name(cfg.name)
    if cfg.name == CUSTOM:
        return custom_members(cfg)
    return READERS[cfg.name].members(locate_source(cfg))


def read_raw(cfg: DataConfig) -> RawData:
    """The dataset as read, unfiltered."""
    if cfg.name == CUSTOM:
        return read_custom(cfg)
    return READERS[cfg.name].read(locate_source(cfg))


# ---------------------------------------------------------------------------------------------------------
# Fingerprint and cache folders


def fingerprint(cfg: DataConfig, members: list[Member], preprocessing: Preprocessing) -> str:
    """sha256 over the raw files' content identities, the settings that shape the result and FORMAT_VERSION.

    Paths are left out on purpose: the same files elsewhere share a cache.
    """
    reading: dict[str, Any] = {}
    if cfg.name == CUSTOM:
        reading = {
            k: getattr(cfg, k)
            for k in ("user_column", "item_column", "timestamp_column", "rating_column", "text_columns", "separator",
                      "order_column", "order_number_column", "days_since_prior_column", "hour_column")
        }
    payload = {
        "format": FORMAT_VERSION,
        "duplicates": DUPLICATES_POLICY if cfg.duplicates == "drop_exact" else "every row kept",
        "name": cfg.name,
        "preset": cfg.preset,
        "preprocessing": preprocessing.as_dict(),
        "reading": reading,
        "files": [[Path(m.name).name, m.identity()] for m in members],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def prepared_dir(cfg: DataConfig, fingerprint_hex: str) -> Path:
    """The cache folder of one prepared dataset."""
    return cache_root(cfg.cache_dir) / "prepared" / f"{cfg.name}-{fingerprint_hex[:16]}"


# ---------------------------------------------------------------------------------------------------------
# Preparing


def prepare_dataset(cfg: DataConfig, progress: bool = False, use_cache: bool = True) -> PreparedDataset:
    """The dataset `cfg` describes, as per-user sequences over internal ids (see PreparedDataset).

    Reuses `<cache>/prepared/<name>-<fingerprint>/` when present and complete; otherwise builds it and writes
    it atomically (use_cache=False: build, write nothing). `progress` shows the stages on stderr.
    Every problem with the input is a DataError naming the file, line, column or filter at fault.
    """
    check_name(cfg.name)
    preprocessing = resolve_preprocessing(cfg)
    members = source_members(cfg)
    fp = fingerprint(cfg, members, preprocessing)
    folder = prepared_dir(cfg, fp)
    if use_cache:
        cached = load_prepared(folder, fp)
        if cached is not None:
            return cached
    stage = _stages(progress, cfg.name)
    if wants_streaming(cfg, members):
        ds = build_out_of_core(cfg, members, preprocessing, fp, stage, folder if use_cache else None)
    else:
        ds = build_dataset(cfg, preprocessing, fp, stage)
    if use_cache:
        save_prepared(ds, folder, preprocessing)
    return ds


def build_dataset(
    cfg: DataConfig, preprocessing: Preprocessing, fp: str, stage: Callable[[str], None] | None = None
) -> PreparedDataset:
    """Read, drop exact duplicates, filter, map ids and build sequences; no caching."""
    stage = stage or _quiet
    stage("read")
    raw = read_raw(cfg)
    interactions, item_table, text_columns = raw.interactions, raw.items, raw.text_columns
    del raw  # let each filter step free the frame before it (matters at ml-25m scale)
    stage("filter")
    # data.duplicates: keep, for a log where one item really occurs twice at one time (two of it in one basket)
    unique = drop_exact_duplicates(interactions) if cfg.duplicates == "drop_exact" else interactions
    duplicates = interactions.height - unique.height
    del interactions
    kept = filter_min_rating(unique, preprocessing.min_rating)
    del unique
    kept = filter_counts(
        kept, preprocessing.min_user_interactions, preprocessing.min_item_interactions, preprocessing.core
    )
    kept = keep_last(kept, preprocessing.max_history)
    stage("ids")
    user_map = build_user_map(kept[schema.USER_ID])
    item_map = build_item_map(kept[schema.ITEM_ID])
    # Dense ranks follow the same sort order as the maps, so no join over all interactions is needed.
    indexed = kept.lazy().select(
        dense_index(schema.USER_ID).alias(schema.USER_IDX),
        dense_index(schema.ITEM_ID).alias(schema.ITEM_IDX),
        schema.TIMESTAMP,
        schema.ROW,
    )
    del kept
    stage("sequences")
    sequences = build_sequences(indexed)
    items = attach_items(item_map, item_table)
    stage("done")
    return PreparedDataset(cfg.name, cfg.preset, sequences, user_map, item_map, items, fp, text_columns,
                           duplicates_dropped=duplicates)


def build_out_of_core(
    cfg: DataConfig,
    members: list[Member],
    preprocessing: Preprocessing,
    fp: str,
    stage: Callable[[str], None] | None = None,
    beside: Path | None = None,
    rows_per_bucket: int | None = None,
) -> PreparedDataset:
    """`build_dataset`'s result, prepared out of core (recsys.data.streaming) in a temporary folder beside the
    cache folder `beside` (None: in the system's temporary folder), removed when done; rows_per_bucket None:
    streaming.ROWS_PER_BUCKET. A custom log that only the in-memory reader can read (ISO-8601 timestamps, a
    gzipped file, or one with a bad line, which that reader then names) is built in memory."""
    stage = stage or _quiet
    log: Member | pl.LazyFrame = members[0]
    if cfg.name == CUSTOM:
        scan = scan_interactions(members[0], cfg)
        if scan is None:
            return build_dataset(cfg, preprocessing, fp, stage)
        item_table = (read_items(members[1], cfg, scan.collect_schema()[schema.ITEM_ID]) if len(members) > 1
                      else pl.DataFrame({schema.ITEM_ID: pl.Series([], dtype=scan.collect_schema()[schema.ITEM_ID])}))
        text_columns = tuple(c for c in item_table.columns if c != schema.ITEM_ID)
        log = scan
    else:
        item_table = READERS[cfg.name].read_movies(members[1])  # small: read first, so that a bad one fails at once
        text_columns = MOVIELENS_TEXT_COLUMNS
    with _work_folder(beside) as work:
        built = stream_log(log, cfg.duplicates == "drop_exact", preprocessing, stage, work, rows_per_bucket)
    items = attach_items(built.item_map, item_table)
    stage("done")
    return PreparedDataset(cfg.name, cfg.preset, built.sequences, built.user_map, built.item_map, items, fp,
                           text_columns, duplicates_dropped=built.duplicates_dropped)


@contextmanager
def _work_folder(beside: Path | None) -> Iterator[Path]:
    """An empty folder for out-of-core work: beside the cache folder (same disk as the cache, and cleared by
    the next run should this one be killed), or a system temporary one; removed when the block ends."""
    if beside is None:
        with tempfile.TemporaryDirectory(prefix="recsys-streaming-") as tmp:
            yield Path(tmp)
        return
    target = beside.with_name(beside.name + ".streaming")
    remove_abandoned_folders(target)
    with folder_beside(target) as work:
        yield work


def attach_items(item_map: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """One row per mapped item: item_idx, item_id and the item table's columns (null where unknown)."""
    table = items.with_columns(pl.col(schema.ITEM_ID).cast(item_map[schema.ITEM_ID].dtype, strict=False))
    table = table.unique(schema.ITEM_ID, keep="first", maintain_order=True)
    return item_map.join(table, on=schema.ITEM_ID, how="left", maintain_order="left")


# ---------------------------------------------------------------------------------------------------------
# Cache folders


def save_prepared(ds: PreparedDataset, folder: Path, preprocessing: Preprocessing) -> None:
    """Write `ds` to `folder` atomically: built in a temporary sibling, then renamed into place (`recsys.durable`).
    Temporary folders of earlier writers that were killed are removed first."""
    remove_abandoned_folders(folder)
    with folder_beside(folder) as tmp:
        for name, frame in zip(FILES, (ds.sequences, ds.user_map, ds.item_map, ds.items), strict=True):
            frame.write_parquet(tmp / f"{name}.parquet")
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": ds.fingerprint,
            "name": ds.name,
            "preset": ds.preset,
            "preprocessing": preprocessing.as_dict(),
            "text_columns": list(ds.text_columns),
            "stats": dataset_stats(ds),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if load_prepared(folder, None) is not None:
            return  # another process finished the same dataset first; theirs is as good as ours
        publish_folder(tmp, folder, replace=True)  # replaces an incomplete or corrupt folder from an older crash


def load_prepared(folder: Path, expected_fingerprint: str | None) -> PreparedDataset | None:
    """The dataset cached in `folder`, or None when it is missing, incomplete, corrupt or another version."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            return None
        if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
            return None
        frames = [pl.read_parquet(folder / f"{name}.parquet") for name in FILES]
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None  # json.JSONDecodeError is a ValueError
    return PreparedDataset(
        name=meta["name"],
        preset=meta["preset"],
        sequences=frames[0],
        user_map=frames[1],
        item_map=frames[2],
        items=frames[3],
        fingerprint=meta["fingerprint"],
        text_columns=tuple(meta.get("text_columns", ())),
        duplicates_dropped=int(meta.get("stats", {}).get("duplicates_dropped", 0)),
    )


# ---------------------------------------------------------------------------------------------------------
# Statistics and progress


def dataset_stats(ds: PreparedDataset) -> dict[str, Any]:
    """Users, items, interactions, density and the distribution of sequence lengths."""
    lengths = ds.sequences[schema.ITEMS].list.len()
    interactions = int(lengths.sum())
    cells = ds.n_users * ds.n_items
    quantiles = {f"p{q}": _quantile(lengths, q / 100) for q in (50, 90, 99)}
    return {
        "name": ds.name,
        "preset": ds.preset,
        "users": ds.n_users,
        "items": ds.n_items,
        "interactions": interactions,
        "density": interactions / cells if cells else 0.0,
        "sequence_length": {"mean": _number(lengths.mean()), **quantiles, "max": int(_number(lengths.max()))},
        "duplicates_dropped": ds.duplicates_dropped,
        **{f"{split}_targets_repeating_previous": share for split, share in repeated_target_shares(ds).items()},
        "fingerprint": ds.fingerprint,
    }


def repeated_target_shares(ds: PreparedDataset) -> dict[str, float]:
    """Shares of the leave-one-out test targets (each user's last item) and validation targets (the one before
    it) that repeat the item just before them, over the users leave-one-out evaluates: what "repeat the last
    item" would get right at rank 1."""
    items = ds.sequences[schema.ITEMS]
    evaluated = items.filter(items.list.len() >= MIN_EVALUATED_LENGTH)
    return {
        "test": _number((evaluated.list.get(-1) == evaluated.list.get(-2)).mean()),
        "valid": _number((evaluated.list.get(-2) == evaluated.list.get(-3)).mean()),
    }


def leakage_warning(ds: PreparedDataset) -> str | None:
    """One warning line when the log makes next-item prediction trivially easy, else None."""
    shares = repeated_target_shares(ds)
    if max(shares.values()) < REPEAT_TARGET_WARNING_SHARE:
        return None
    return (f"warning: {ds.name}: {shares['test']:.0%} of the users' last interactions (the test targets) and "
            f"{shares['valid']:.0%} of the ones before them (the validation targets) repeat the item just before "
            "them: repeating the last item scores that high; check the log for events written twice (exact "
            f"duplicates of user, item and timestamp are already dropped: {ds.duplicates_dropped:,})")


def _number(value: Any) -> float:
    """A polars scalar aggregate as a float (0.0 for the empty case, where polars returns None)."""
    return float(value) if value is not None else 0.0


def _quantile(lengths: pl.Series, q: float) -> float:
    value = lengths.quantile(q, interpolation="linear")
    return float(value) if value is not None else 0.0


def _quiet(_stage: str) -> None:
    return None


@dataclass
class _Progress:
    """Stage-by-stage progress on stderr (tqdm is imported only when asked for)."""

    name: str

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=4, desc=f"prepare {self.name}", unit="stage", leave=True)

    def __call__(self, stage: str) -> None:
        if stage == "done":
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
            return
        if stage != "read":
            self.bar.update(1)
        self.bar.set_postfix_str(stage)


def _stages(progress: bool, name: str) -> Callable[[str], None]:
    return _Progress(name) if progress else _quiet
