"""A user's own interaction log: CSV (optionally gzipped) or Parquet, with configurable column names.

A basket log without timestamps (order numbers and days between orders, as Instacart's) or a JSON file of
baskets per user (Ta-Feng's) is read through recsys.data.baskets: see order_number_column.

Ids may be integers (kept as Int64) or any text (kept as String). Timestamps may be numbers (seconds;
fractions are dropped, equal seconds keep file order), Parquet datetimes/dates, or ISO-8601 strings such as
'2024-05-01T12:30:00' or '2024-05-01' (one format per file; the first value decides it).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.baskets import check_one_order_per_id, is_basket_json, order_timeline, read_basket_json
from recsys.data.io import Member
from recsys.data.raw import INTERACTION_COLUMNS, RawData
from recsys.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")


def custom_members(cfg: DataConfig) -> list[Member]:
    """The files a custom dataset reads (interactions, then the item table if any)."""
    if not cfg.interactions_file:
        raise DataError("dataset 'custom' needs interactions_file (a CSV or Parquet log of user, item, timestamp)")
    files = [cfg.interactions_file] + ([cfg.items_file] if cfg.items_file else [])
    return [_member(Path(f)) for f in files]


def read_custom(cfg: DataConfig) -> RawData:
    """Interactions (and the optional item table) of a user's own log, as `RawData`."""
    members = custom_members(cfg)
    interactions = read_interactions(members[0], cfg)
    items = (
        read_items(members[1], cfg, interactions[schema.ITEM_ID].dtype) if len(members) > 1 else _no_items(interactions)
    )
    text_columns = tuple(c for c in items.columns if c != schema.ITEM_ID)
    return RawData(interactions, items, text_columns)


def read_interactions(member: Member, cfg: DataConfig) -> pl.DataFrame:
    """user_id, item_id, rating, timestamp, row from the configured columns of one file. A basket log
    (order_number_column set) gets its timestamps from order numbers and gaps (recsys.data.baskets)."""
    wanted = {cfg.user_column: schema.USER_ID, cfg.item_column: schema.ITEM_ID}
    basket = {name: column for name, column in (("order_number", cfg.order_number_column),
                                                ("days", cfg.days_since_prior_column), ("hour", cfg.hour_column),
                                                ("order", cfg.order_column)) if column}
    if cfg.order_number_column is None:
        wanted[cfg.timestamp_column] = schema.TIMESTAMP
        basket.pop("order", None)  # checked only together with a timeline from order numbers
    if cfg.rating_column:
        wanted[cfg.rating_column] = schema.RATING
    read = {**wanted, **{column: f"_{name}" for name, column in basket.items()}}
    frame = _require_rows(_read_table(member, cfg, list(read)), member).rename(read).with_row_index(schema.ROW)
    first_line = 1 if _is_parquet(member) else 2  # CSV line numbers count the header
    users = _ids(frame[schema.USER_ID], member, cfg.user_column, first_line)
    columns = {
        schema.USER_ID: users,
        schema.ITEM_ID: _ids(frame[schema.ITEM_ID], member, cfg.item_column, first_line),
        schema.RATING: _ratings(frame, member, cfg.rating_column, first_line),
        schema.TIMESTAMP: _basket_times(frame, users, member, cfg) if cfg.order_number_column
        else parse_timestamps(frame[schema.TIMESTAMP], member, cfg.timestamp_column, first_line),
        schema.ROW: frame[schema.ROW],
    }
    return pl.DataFrame(columns).select(INTERACTION_COLUMNS)


def scan_interactions(member: Member, cfg: DataConfig) -> pl.LazyFrame | None:
    """The lazy twin of `read_interactions` (same columns, dtypes and rows), for recsys.data.streaming: a plain
    CSV or Parquet log with timestamps, checked by one streaming pass. None when only the in-memory reader can
    read it, or say what is wrong with it: a basket log, a gzipped file, ISO-8601 timestamps, a missing column,
    no rows, an empty id or time, a rating or time that is no usable number."""
    if cfg.order_number_column or is_basket_json(member) or member.path is None:
        return None
    names = {cfg.user_column: schema.USER_ID, cfg.item_column: schema.ITEM_ID, cfg.timestamp_column: schema.TIMESTAMP}
    if cfg.rating_column:
        names[cfg.rating_column] = schema.RATING
    try:
        scan = (pl.scan_parquet(member.path) if _is_parquet(member)
                else pl.scan_csv(member.path, separator=cfg.separator, infer_schema=False, raise_if_empty=False))
        found = scan.collect_schema()
        if any(column not in found for column in names):
            return None
        scan = scan.select(list(names)).rename(names)
        dtypes = scan.collect_schema()
        checks = {"rows": pl.len(), **_id_checks(dtypes, schema.USER_ID), **_id_checks(dtypes, schema.ITEM_ID),
                  **_time_checks(dtypes[schema.TIMESTAMP])}
        if cfg.rating_column:
            rating = pl.col(schema.RATING)
            checks["bad_ratings"] = (rating.cast(pl.Float32, strict=False).is_null() & rating.is_not_null()).sum()
        found_counts = scan.select(**checks).collect(engine="streaming").row(0, named=True)
    except pl.exceptions.PolarsError:
        return None
    problems = [name for name, count in found_counts.items() if name.startswith("bad") and count]
    if found_counts["rows"] == 0 or problems or found_counts.get("not_numbers", 0):
        return None
    ids = [_lazy_id(dtypes[column], column, found_counts[f"{column}_not_int"]) for column in (schema.USER_ID,
                                                                                              schema.ITEM_ID)]
    rating = (pl.col(schema.RATING).cast(pl.Float32, strict=False) if cfg.rating_column
              else pl.lit(None, dtype=pl.Float32).alias(schema.RATING))
    time = _lazy_seconds(dtypes[schema.TIMESTAMP], found_counts.get("not_int", 0))
    return scan.with_row_index(schema.ROW).select(*ids, rating, time.alias(schema.TIMESTAMP), schema.ROW)


def _id_checks(dtypes: pl.Schema, column: str) -> dict[str, pl.Expr]:
    """Counts that decide an id column's dtype (`_ids`: Int64 when every value is an integer) and its empties."""
    text = pl.col(column).cast(pl.String)
    return {f"bad_{column}_empty": pl.col(column).null_count(),
            f"{column}_not_int": pl.lit(0) if dtypes[column].is_integer()
            else text.cast(pl.Int64, strict=False).is_null().sum()}


def _lazy_id(dtype: pl.DataType, column: str, not_int: int) -> pl.Expr:
    if dtype.is_integer():
        return pl.col(column).cast(pl.Int64)
    text = pl.col(column).cast(pl.String)
    return text.cast(pl.Int64) if not_int == 0 else text


def _time_checks(dtype: pl.DataType) -> dict[str, pl.Expr]:
    """Counts that decide how timestamps parse (`parse_timestamps`), and the values `_whole_seconds` refuses."""
    ts = pl.col(schema.TIMESTAMP)
    if dtype == pl.Datetime or dtype == pl.Date:
        return {}
    checks = {"bad_time_empty": ts.null_count()}
    if dtype.is_integer():
        return checks | {"bad_time": (ts.cast(pl.Int64, strict=False).is_null() & ts.is_not_null()).sum()}
    text = ts.cast(pl.String)
    numbers = ts.cast(pl.Float64, strict=False) if dtype.is_numeric() else text.cast(pl.Float64, strict=False)
    not_int = pl.lit(1) if dtype.is_float() else text.cast(pl.Int64, strict=False).is_null().sum()
    unusable = (~(numbers.is_finite() & (numbers.abs() < 2.0**63))).fill_null(True).sum()  # null: not a number
    return checks | {"not_int": not_int,
                     # when not all integers: must all be usable numbers (ISO strings are read in memory)
                     "not_numbers": pl.when(not_int > 0).then(unusable).otherwise(0)}


def _lazy_seconds(dtype: pl.DataType, not_int: int) -> pl.Expr:
    ts = pl.col(schema.TIMESTAMP)
    if dtype == pl.Datetime or dtype == pl.Date:
        return ts.cast(pl.Datetime("us")).dt.epoch("s")
    if dtype.is_integer():
        return ts.cast(pl.Int64)
    numbers = ts if dtype.is_float() else ts.cast(pl.String)
    if not dtype.is_float() and not_int == 0:
        return numbers.cast(pl.Int64)  # exact over the whole Int64 range, unlike via Float64
    return numbers.cast(pl.Float64).floor().cast(pl.Int64)


def _basket_times(frame: pl.DataFrame, users: pl.Series, member: Member, cfg: DataConfig) -> pl.Series:
    """Timestamps of a basket log from its order numbers, gaps and hours (recsys.data.baskets)."""
    if cfg.order_column:
        check_one_order_per_id(users, frame["_order_number"], frame["_order"], member.label, cfg.order_column)
    return order_timeline(
        users, frame["_order_number"], frame["_days"] if cfg.days_since_prior_column else None,
        frame["_hour"] if cfg.hour_column else None, member.label,
        (str(cfg.order_number_column), cfg.days_since_prior_column, cfg.hour_column))


def read_items(member: Member, cfg: DataConfig, id_dtype: pl.DataType) -> pl.DataFrame:
    """The item table: item_id (as in the interactions) plus the text columns (all other columns if none named)."""
    header = _read_table(member, cfg, None)
    text = list(cfg.text_columns) or [c for c in header.columns if c != cfg.item_column]
    _check_columns(member, header.columns, [cfg.item_column, *text])
    items = header.select(cfg.item_column, *text).rename({cfg.item_column: schema.ITEM_ID})
    ids = _ids(items[schema.ITEM_ID].cast(pl.String), member, cfg.item_column, 2).cast(id_dtype, strict=False)
    return items.with_columns(ids).unique(schema.ITEM_ID, keep="first", maintain_order=True)


def parse_timestamps(values: pl.Series, member: Member, column: str, first_line: int) -> pl.Series:
    """Int64 seconds since the epoch from numbers, datetimes, dates or ISO strings (see the module doc)."""
    if values.dtype.is_numeric():
        _check_no_empty(values, member, column, first_line)
        return _whole_seconds(values, member, column, first_line)
    if values.dtype == pl.Datetime or values.dtype == pl.Date:
        return values.cast(pl.Datetime("us")).dt.epoch("s")
    text = values.cast(pl.String)
    _check_no_empty(text, member, column, first_line)
    integers = text.cast(pl.Int64, strict=False)  # exact over the whole Int64 range, unlike via Float64
    if integers.null_count() == 0:
        return integers
    numbers = text.cast(pl.Float64, strict=False)
    if numbers.null_count() == 0:
        return _whole_seconds(numbers, member, column, first_line)
    try:
        parsed = text.str.to_datetime(strict=False).dt.epoch("s")
    except pl.exceptions.PolarsError:
        parsed = pl.Series([None] * text.len(), dtype=pl.Int64)
    _raise_first_null(parsed, text, member, column, first_line, "not a number or ISO datetime")
    return parsed


def _whole_seconds(values: pl.Series, member: Member, column: str, first_line: int) -> pl.Series:
    """Int64 seconds from integers (exact) or floats (fractions dropped); NaN, infinite or beyond Int64 is a
    DataError naming the first such value."""
    if values.dtype.is_integer():
        seconds = values.cast(pl.Int64, strict=False)  # only UInt64 values past 2**63 - 1 fail
        bad = seconds.is_null()
    else:
        numbers = values.cast(pl.Float64)
        bad = ~(numbers.is_finite() & (numbers.abs() < 2.0**63))
        seconds = numbers.floor().cast(pl.Int64, strict=False)
    if bad.any():
        row = bad.arg_true()[0]
        raise DataError(f"{member.label}: {_where(member, row, first_line)}: column {column!r}: not a usable "
                        f"timestamp (NaN, infinite or beyond 64-bit seconds): {values.cast(pl.String)[row]!r}")
    return seconds


def _ids(values: pl.Series, member: Member, column: str, first_line: int) -> pl.Series:
    """Integer ids as Int64, anything else as String; empty ids are a DataError."""
    if values.dtype.is_integer():
        _check_no_empty(values, member, column, first_line)
        return values.cast(pl.Int64)
    text = values.cast(pl.String)
    _check_no_empty(text, member, column, first_line)
    as_int = text.cast(pl.Int64, strict=False)
    return as_int if as_int.null_count() == 0 else text


def _ratings(frame: pl.DataFrame, member: Member, column: str | None, first_line: int) -> pl.Series:
    if column is None:
        return pl.Series(schema.RATING, [None] * frame.height, dtype=pl.Float32)
    values = frame[schema.RATING]
    text = values.cast(pl.String)
    numbers = values.cast(pl.Float32, strict=False)
    _raise_first_null(numbers, text, member, column, first_line, "not a number")
    return numbers


def _read_table(member: Member, cfg: DataConfig, columns: list[str] | None) -> pl.DataFrame:
    """Read `columns` (None: all) of a CSV (as text, converted later) or Parquet file."""
    try:
        if is_basket_json(member):
            frame = read_basket_json(member)
        elif _is_parquet(member):
            frame = pl.read_parquet(member.polars_input())
        else:
            frame = pl.read_csv(
                member.polars_input(), separator=cfg.separator, infer_schema=False, raise_if_empty=False
            )
    except pl.exceptions.PolarsError as exc:
        _refuse_empty(member)  # a 0-byte Parquet file fails to parse: say that it is empty, not why parsing failed
        kind = "Parquet" if _is_parquet(member) else f"CSV with separator {cfg.separator!r}"
        raise DataError(f"{member.label}: cannot read as {kind} ({str(exc).strip().splitlines()[0]})") from None
    if frame.width == 0:  # polars found no header line: nothing at all, or only blank lines
        _refuse_empty(member)
        raise DataError(f"{member.label}: no header line and no rows (only blank lines)")
    if columns is None:
        return frame
    _check_columns(member, frame.columns, columns, cfg.separator)
    return frame.select(columns)


def _refuse_empty(member: Member) -> None:
    """A DataError when the file has no bytes at all."""
    size = member.path.stat().st_size if member.path is not None else len(member.read_bytes())
    if size == 0:
        raise DataError(f"{member.label}: the file is empty (0 bytes)")


def _require_rows(frame: pl.DataFrame, member: Member) -> pl.DataFrame:
    """`frame` when it has rows; a header without a single row below it is a DataError naming the file and the
    columns it found, not an empty dataset that fails later, far from its cause."""
    if frame.height == 0:
        what = "columns" if _is_parquet(member) else "a header line"
        raise DataError(f"{member.label}: the file has {what} ({', '.join(frame.columns)}) but no rows")
    return frame


def _check_columns(member: Member, found: list[str], required: list[str], separator: str | None = None) -> None:
    missing = [c for c in required if c not in found]
    if missing:
        hint = f" (wrong separator? using {separator!r})" if separator and len(found) == 1 else ""
        raise DataError(
            f"{member.label}: missing column {missing[0]!r}{hint}; found {', '.join(map(repr, found[:10]))}"
        )


def _check_no_empty(values: pl.Series, member: Member, column: str, first_line: int) -> None:
    if values.null_count():
        row = values.is_null().arg_true()[0]
        raise DataError(f"{member.label}: {_where(member, row, first_line)}: column {column!r} is empty")


def _raise_first_null(
    parsed: pl.Series, text: pl.Series, member: Member, column: str, first_line: int, problem: str
) -> None:
    bad = parsed.is_null() & text.is_not_null()
    if bad.any():
        row = bad.arg_true()[0]
        raise DataError(
            f"{member.label}: {_where(member, row, first_line)}: column {column!r}: {problem}: {text[row]!r}"
        )


def _where(member: Member, row: int, first_line: int) -> str:
    return f"row {row + first_line}" if _is_parquet(member) else f"line {row + first_line}"


def _member(path: Path) -> Member:
    path = path.expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return Member(path.parent, path.name, in_zip=False)


def _is_parquet(member: Member) -> bool:
    return member.name.endswith(PARQUET_SUFFIXES)


def _no_items(interactions: pl.DataFrame) -> pl.DataFrame:
    return pl.DataFrame({schema.ITEM_ID: pl.Series([], dtype=interactions[schema.ITEM_ID].dtype)})
