"""Items as text: the key-value attributes a text model reads, and new items read from a user's file.

An item's text is its item-table columns that describe it in words (MovieLens: title, year, genres; a custom
log: `data.text_columns`), as an ordered mapping key -> value text, e.g.
{"title": "Toy Story", "year": "1995", "genres": "Animation, Children's, Comedy"}. Empty values are left
out, lists are joined with ", ". Recformer renders it as "title: Toy Story year: 1995 genres: ...".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from recsys.data import schema
from recsys.errors import DataError

LIST_SEPARATOR = "|"  # a list column (MovieLens genres) written in a CSV cell: "Animation|Comedy"


def item_attributes(items: pl.DataFrame, text_columns: Sequence[str]) -> list[dict[str, str]]:
    """One attribute mapping per row of `items`, in row order (sort by item_idx first for a catalogue)."""
    columns = [c for c in text_columns if c in items.columns]
    rows = items.select(columns).iter_rows() if columns else ([] for _ in range(items.height))
    return [{key: text for key, value in zip(columns, row) if (text := _text(value))} for row in rows]


def catalogue_attributes(items: pl.DataFrame, text_columns: Sequence[str], n_items: int) -> list[dict[str, str]]:
    """Attributes of item_idx 1..n_items in order; an item missing from the table gets no attributes."""
    table = items.filter(pl.col(schema.ITEM_IDX).is_between(1, n_items)).sort(schema.ITEM_IDX)
    by_idx = dict(zip(table[schema.ITEM_IDX].to_list(), item_attributes(table, text_columns)))
    return [by_idx.get(idx, {}) for idx in range(1, n_items + 1)]


def text_columns_of(items: pl.DataFrame) -> tuple[str, ...]:
    """An item table's descriptive columns: all but the ids."""
    return tuple(c for c in items.columns if c not in (schema.ITEM_IDX, schema.ITEM_ID))


def read_new_items(path: str | Path, catalogue: pl.DataFrame, known_ids: set[Any], text_columns: Sequence[str],
                   item_column: str = schema.ITEM_ID) -> pl.DataFrame:
    """New items from a CSV or Parquet file: `item_column` plus every one of `text_columns`, converted to the
    dtypes of the catalogue's item table (`catalogue`: item_id and the text columns). A missing column, an
    empty or duplicated id, an id the catalogue already has, or a value of the wrong type is a DataError
    naming the file and the row or id."""
    path = Path(path).expanduser()
    frame = _read(path)
    missing = [c for c in (item_column, *text_columns) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (a new item needs {item_column!r} and the text "
                        f"columns {', '.join(map(repr, text_columns))}); found {', '.join(map(repr, frame.columns[:10]))}")
    if frame.height == 0:
        raise DataError(f"{path}: no items in the file")
    first_row = 1 if path.suffix in (".parquet", ".pq") else 2  # CSV line numbers count the header
    ids = _ids(frame[item_column], catalogue[schema.ITEM_ID].dtype, path, item_column, first_row)
    seen: dict[Any, int] = {}
    for row, item in enumerate(ids.to_list()):
        if item in seen:
            raise DataError(f"{path}: row {row + first_row}: item id {item!r} is duplicated (first at row "
                            f"{seen[item] + first_row})")
        seen[item] = row
        if item in known_ids:
            raise DataError(f"{path}: row {row + first_row}: item id {item!r} is already in the model's catalogue")
    columns = [ids.alias(schema.ITEM_ID)]
    for name in text_columns:
        target = catalogue[name].dtype if name in catalogue.columns else pl.String()
        columns.append(_convert(frame[name], target, path, first_row))
    return pl.DataFrame(columns)


def read_item_ids(path: str | Path, item_column: str, dtype: pl.DataType) -> pl.Series:
    """The `item_column` of a CSV or Parquet file (an interaction log, one row per interaction) as item ids of
    `dtype` (the catalogue's); a missing column, an empty cell or a non-integer id where ids are integers is a
    DataError naming the file and the row."""
    path = Path(path).expanduser()
    frame = _read(path)
    if item_column not in frame.columns:
        raise DataError(f"{path}: missing column {item_column!r}; found {', '.join(map(repr, frame.columns[:10]))}")
    if frame.height == 0:
        raise DataError(f"{path}: no rows in the file")
    first_row = 1 if path.suffix in (".parquet", ".pq") else 2
    return _ids(frame[item_column], dtype, path, item_column, first_row)


def _read(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix in (".parquet", ".pq"):
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema=False, raise_if_empty=False)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{path}: cannot read as CSV or Parquet ({str(exc).strip().splitlines()[0]})") from None


def _ids(values: pl.Series, dtype: pl.DataType, path: Path, column: str, first_row: int) -> pl.Series:
    text = values.cast(pl.String).str.strip_chars()
    empty = text.is_null() | (text == "")
    if empty.any():
        raise DataError(f"{path}: row {int(empty.arg_true()[0]) + first_row}: column {column!r} is empty")
    if not dtype.is_integer():
        return text
    numbers = text.cast(pl.Int64, strict=False)
    if numbers.is_null().any():
        row = int(numbers.is_null().arg_true()[0])
        raise DataError(f"{path}: row {row + first_row}: column {column!r}: item id {text[row]!r} is not an "
                        "integer, as the model's item ids are")
    return numbers


def _convert(values: pl.Series, target: pl.DataType, path: Path, first_row: int) -> pl.Series:
    """A new-item column in the catalogue's dtype: lists split on '|', numbers parsed (empty stays null)."""
    if values.dtype == target:
        return values
    text = values.cast(pl.String)
    if isinstance(target, pl.List):
        return text.str.split(LIST_SEPARATOR).list.eval(pl.element().str.strip_chars()).alias(values.name)
    if target.is_numeric():
        converted = text.str.strip_chars().cast(target, strict=False)
        bad = converted.is_null() & text.is_not_null() & (text.str.strip_chars() != "")
        if bad.any():
            row = int(bad.arg_true()[0])
            raise DataError(f"{path}: row {row + first_row}: column {values.name!r}: {text[row]!r} is not a number")
        return converted
    return text


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value if v is not None and str(v).strip())
    return str(value).strip()
