"""Out-of-core preparation: a log larger than memory, prepared to the same result as the in-memory path.

Why: `prepare.build_dataset` holds the whole log (about 32 bytes a row) and a copy or two of it while it
filters, so a log of a few hundred million rows does not fit a 24 GB machine. Sorting it all with polars'
streaming engine does not help: in polars 2.1 a streaming sort still holds its input (20M rows peaked at
1.5 GB, twice the frame), so this path never sorts the whole log.

How, stage by stage (the same four stages and progress bar as the in-memory path):
  read:      the ratings file is scanned lazily (a zipped, gzipped or `::`-separated one is first copied to a
             plain file, a chunk at a time; a custom log is scanned by `generic.scan_interactions`) and
             streamed into `log.parquet`; a streaming count of rows per user
             then cuts the users, in id order, into buckets of about `rows_per_bucket` rows (a user is never
             split), and one more streaming pass writes each bucket's rows to its own Parquet folder.
  filter:    one bucket at a time, in memory: its rows in file order, exact duplicates dropped, the rating
             threshold; every row of a user is in one bucket, so this is exactly what the whole log would give.
             Then the item and user minimums (and the k-core's rounds) as streaming group_by counts over all
             buckets, whose results are small: the ids kept, one row per user or item.
  ids:       the maps from streaming `unique` over the kept rows (after `max_history`, applied per bucket).
  sequences: per bucket, ids joined from the maps and `build_sequences`; buckets hold contiguous ranges of
             user ids, so their sequences, concatenated in bucket order, come out in user_idx order.
The per-bucket steps call the in-memory functions themselves (recsys.data.sequences), and the global ones
reproduce their messages, so the result and every error are the same as in memory (tests/data/test_streaming.py).
Memory: one bucket, the small count tables, and the result itself (the sequences, 12 bytes an interaction).
Disk: the log about twice over as Parquet, in a temporary folder beside the cache, removed at the end.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.baskets import is_basket_json
from recsys.data.ids import build_item_map, build_user_map
from recsys.data.io import Member, diagnose_delimited, no_rows_error, scan_delimited, spool_member
from recsys.data.movielens import CSV_RATING_COLUMNS, RATING_DTYPES, RATING_FIELDS, RATINGS_FORMATS, READERS
from recsys.data.presets import Preprocessing
from recsys.data.raw import INTERACTION_COLUMNS
from recsys.data.sequences import build_sequences, drop_exact_duplicates, keep_last
from recsys.errors import DataError

AUTO_THRESHOLD_BYTES = 512 << 20
"""data.streaming=auto streams a ratings file of this size or more on disk, about 20M rows of a MovieLens CSV.
On a synthetic ML-32M-schema log (benchmarks/results/data_prepare_streaming.json), 32M rows (0.83 GiB) peaked at
1.9 GB out of core, with less CPU than in memory (7.9 GB); 8M rows (0.2 GiB, timed once by hand) took 1.4 times
the in-memory path's CPU, whose peak is small there."""
ROWS_PER_BUCKET = 8_000_000
"""Rows of one bucket, the unit held in memory: 8M rows take about 250 MB as read and under 1 GB while a
bucket's duplicates are dropped and its sequences built."""
STREAMING = "streaming"
WORK_COMPRESSION = "lz4"
"""Compression of the temporary Parquet files: read back once or twice, so cheap to write beats small."""


def wants_streaming(cfg: DataConfig, members: list[Member]) -> bool:
    """Whether `cfg` prepares out of core (data.streaming; 'auto' decides by the interactions file's size)."""
    if cfg.streaming is False:
        return False
    if cfg.order_number_column or is_basket_json(members[0]):
        if cfg.streaming is True:
            raise DataError(f"data.streaming=true: {members[0].label} is a basket log, read in memory (its timeline "
                            "comes from order numbers); set data.streaming=auto or false")
        return False
    return cfg.streaming is True or stored_size(members[0]) >= AUTO_THRESHOLD_BYTES


def stored_size(member: Member) -> int:
    """Bytes of a member as stored: a file's size, or a zip entry's compressed size."""
    if member.in_zip:
        with zipfile.ZipFile(member.container) as archive:
            return archive.getinfo(member.name).compress_size
    return (member.container / member.name).stat().st_size


@dataclass(frozen=True)
class StreamedLog:
    """What `stream_log` gives `prepare.build_out_of_core`: the parts of a PreparedDataset built from the log."""

    sequences: pl.DataFrame
    user_map: pl.DataFrame
    item_map: pl.DataFrame
    duplicates_dropped: int


def stream_log(
    ratings: Member | pl.LazyFrame,
    drop_exact: bool,
    preprocessing: Preprocessing,
    stage: Callable[[str], None],
    work: Path,
    rows_per_bucket: int | None = None,
) -> StreamedLog:
    """Sequences and id maps of a MovieLens ratings file (or of a custom log scanned by
    `generic.scan_interactions`), built out of core in the empty folder `work` (see the module doc);
    rows_per_bucket None: ROWS_PER_BUCKET."""
    stage("read")
    if isinstance(ratings, pl.LazyFrame):
        log = work / "log.parquet"
        ratings.sink_parquet(log, compression=WORK_COMPRESSION, engine=STREAMING)  # already checked
    else:
        log = _write_log(ratings, work)
    buckets = _partition_by_user(log, work / "buckets", rows_per_bucket or ROWS_PER_BUCKET)
    log.unlink()
    stage("filter")
    clean, duplicates = _clean_buckets(buckets, work / "clean", drop_exact, preprocessing.min_rating)
    kept = _filter_counts(clean, preprocessing)
    stage("ids")
    final = _keep_last(kept, work / "final", preprocessing.max_history)
    user_map, item_map = _id_maps(kept.all() if preprocessing.max_history is None else pl.concat(final))
    stage("sequences")
    parts = [build_sequences(_indexed(frame, user_map, item_map)) for frame in final]
    return StreamedLog(pl.concat(parts, rechunk=False), user_map, item_map, duplicates)


# ---------------------------------------------------------------------------------------------------------
# read: the log as Parquet, then one folder per bucket of users


def _write_log(member: Member, work: Path) -> Path:
    """The ratings as `work/log.parquet` (INTERACTION_COLUMNS, rows in file order); bad lines are the same
    DataErrors as in memory."""
    fmt = RATINGS_FORMATS[Path(member.name).name.removesuffix(".gz")]
    plain = member.path if member.path is not None and fmt.source_separator is None else None
    path = plain or spool_member(member, fmt, work / "ratings.txt")
    if fmt.header:
        columns = {raw: RATING_DTYPES[ours] for raw, ours in CSV_RATING_COLUMNS.items()}
        positional: tuple[str, ...] = ()
        renames = CSV_RATING_COLUMNS
    else:
        columns, positional, renames = dict(RATING_DTYPES), RATING_FIELDS, {}
    log = work / "log.parquet"
    scan = scan_delimited(member, fmt, columns, positional, path, schema.ROW).rename(renames)
    try:
        scan.select(INTERACTION_COLUMNS).sink_parquet(log, compression=WORK_COMPRESSION, engine=STREAMING)
        nulls = pl.scan_parquet(log).select(pl.len(), *[pl.col(c).null_count() for c in INTERACTION_COLUMNS])
        counts = nulls.collect(engine=STREAMING).row(0)
    except pl.exceptions.PolarsError:
        counts = None
    if counts is None or sum(counts[1:]) > 0:
        raise diagnose_delimited(member, fmt, path, columns, positional)
    if counts[0] == 0:
        raise no_rows_error(member)
    if plain is None:
        path.unlink()
    return log


def _partition_by_user(log: Path, folder: Path, rows_per_bucket: int) -> list[Path]:
    """One folder per bucket of users, in user id order; a bucket starts where the rows before it reach a
    multiple of `rows_per_bucket` (so it holds about that many, plus at most one user's history)."""
    per_user = (pl.scan_parquet(log).group_by(schema.USER_ID).agg(pl.len().alias("_n"))
                .collect(engine=STREAMING).sort(schema.USER_ID))
    starts = pl.col("_n").cum_sum() - pl.col("_n")
    buckets = per_user.select(schema.USER_ID, (starts // rows_per_bucket).rank("dense").cast(pl.UInt32).alias("_b"))
    n_buckets = int(buckets["_b"].max() or 0)
    (pl.scan_parquet(log).join(buckets.lazy(), on=schema.USER_ID, how="left")
     .sink_parquet(pl.PartitionBy(folder, key="_b", include_key=False), compression=WORK_COMPRESSION,
                   maintain_order=False, mkdir=True, engine=STREAMING))  # each bucket is put back in file order
    return [folder / f"_b={b}" for b in range(1, n_buckets + 1)]


# ---------------------------------------------------------------------------------------------------------
# filter


def _clean_buckets(
    buckets: list[Path], folder: Path, drop_exact: bool, min_rating: float | None
) -> tuple[list[Path], int]:
    """Each bucket in file order, exact duplicates dropped (drop_exact) and rated at least min_rating, as one
    Parquet file per bucket; the raw bucket folders are removed. Returns the files and the duplicates dropped."""
    folder.mkdir()
    files, duplicates = [], 0
    rows_before, users_before, items_before, rated = 0, 0, [], 0  # for min_rating's messages
    for i, bucket in enumerate(buckets):
        rows = pl.read_parquet(bucket / "*.parquet").sort(schema.ROW)
        unique = drop_exact_duplicates(rows) if drop_exact else rows
        duplicates += rows.height - unique.height
        del rows
        if min_rating is not None:
            rows_before += unique.height
            users_before += unique[schema.USER_ID].n_unique()  # a user is in one bucket only
            items_before.append(unique[schema.ITEM_ID].unique())
            rated += unique.height - unique[schema.RATING].null_count()
            unique = unique.filter(pl.col(schema.RATING) >= min_rating)
        path = folder / f"{i:05d}.parquet"
        unique.write_parquet(path, compression=WORK_COMPRESSION)
        files.append(path)
        shutil.rmtree(bucket, ignore_errors=True)
    if min_rating is not None and rated == 0:  # sequences.filter_min_rating's messages
        raise DataError(f"min_rating={min_rating}: the interactions have no ratings (set rating_column)")
    if min_rating is not None and pl.scan_parquet(files).select(pl.len()).collect(engine=STREAMING).item() == 0:
        items = pl.concat(items_before).n_unique()
        raise DataError(
            f"no interactions left after min_rating={min_rating} (it removed all {rows_before} interactions of "
            f"{users_before} users and {items} items); lower it"
        )
    return files, duplicates


class _Kept:
    """The clean buckets restricted to the users and items the count filters keep (None: all of them)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.users: pl.DataFrame | None = None
        self.items: pl.DataFrame | None = None

    def bucket(self, i: int) -> pl.LazyFrame:
        return self._restrict(pl.scan_parquet(self.files[i]))

    def all(self) -> pl.LazyFrame:
        return self._restrict(pl.scan_parquet(self.files))

    def _restrict(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        for ids in (self.users, self.items):
            if ids is not None:
                frame = frame.join(ids.lazy(), on=ids.columns[0], how="semi")
        return frame


def _filter_counts(files: list[Path], preprocessing: Preprocessing) -> _Kept:
    """`sequences.filter_counts` over all buckets: rare items, then rare users, by streaming counts; with
    core='iterated' repeated until a round drops nothing."""
    kept = _Kept(files)
    height = pl.scan_parquet(files).select(pl.len()).collect(engine=STREAMING).item()
    filters = ((schema.ITEM_ID, preprocessing.min_item_interactions, "min_item_interactions"),
               (schema.USER_ID, preprocessing.min_user_interactions, "min_user_interactions"))
    while True:
        before = height
        for column, k, setting in filters:
            if k <= 1:
                continue  # every value occurs at least once: nothing to drop
            counts = kept.all().group_by(column).agg(pl.len().alias("_n")).collect(engine=STREAMING)
            ids = counts.filter(pl.col("_n") >= k).select(column)
            if ids.height == 0:
                raise _emptied(kept, counts, column, f"{setting}={k}")
            height = int(counts.filter(pl.col("_n") >= k)["_n"].sum())
            if column == schema.ITEM_ID:
                kept.items = ids
            else:
                kept.users = ids
        if preprocessing.core == "single" or height == before:
            return kept


def _emptied(kept: _Kept, counts: pl.DataFrame, column: str, setting: str) -> DataError:
    """`sequences._require_rows`'s message, from the counts of the frame the filter emptied."""
    other = schema.USER_ID if column == schema.ITEM_ID else schema.ITEM_ID
    n_other = kept.all().select(pl.col(other).n_unique()).collect(engine=STREAMING).item()
    users, items = (n_other, counts.height) if column == schema.ITEM_ID else (counts.height, n_other)
    return DataError(
        f"no interactions left after {setting} (it removed all {int(counts['_n'].sum())} interactions of "
        f"{users} users and {items} items); lower it"
    )


# ---------------------------------------------------------------------------------------------------------
# ids and sequences


def _keep_last(kept: _Kept, folder: Path, max_history: int | None) -> list[pl.LazyFrame]:
    """Each bucket's rows for the sequences: with max_history, each user's latest `max_history` of the kept
    rows, written to `folder` (they also decide which items remain, so the maps are built from them)."""
    if max_history is None:
        # The clean rows as they are: `_indexed`'s inner joins with the maps (built from the kept rows) drop the
        # others, since a row is kept exactly when its user and its item are in the maps.
        return [pl.scan_parquet(path) for path in kept.files]
    folder.mkdir()
    final = []
    for i in range(len(kept.files)):
        path = folder / f"{i:05d}.parquet"
        keep_last(kept.bucket(i).collect(), max_history).write_parquet(path, compression=WORK_COMPRESSION)
        final.append(pl.scan_parquet(path))
    return final


def _id_maps(final: pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """user_map and item_map (`ids.build_*_map`) over the distinct ids of the final rows, found streaming."""
    users = final.select(pl.col(schema.USER_ID).unique()).collect(engine=STREAMING)[schema.USER_ID]
    items = final.select(pl.col(schema.ITEM_ID).unique()).collect(engine=STREAMING)[schema.ITEM_ID]
    return build_user_map(users), build_item_map(items)


def _indexed(rows: pl.LazyFrame, user_map: pl.DataFrame, item_map: pl.DataFrame) -> pl.LazyFrame:
    """A bucket's final rows with user_idx and item_idx from the maps (what `ids.dense_index` gives in memory);
    rows of users or items the maps lack are dropped."""
    return (rows.join(user_map.lazy(), on=schema.USER_ID).join(item_map.lazy(), on=schema.ITEM_ID)
            .select(schema.USER_IDX, schema.ITEM_IDX, schema.TIMESTAMP, schema.ROW))
