"""What every reader returns: the raw interactions in the source's own ids, and an item table."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from recsys.data import schema


@dataclass(frozen=True)
class RawData:
    """A dataset as read, before any filtering.

    interactions: user_id, item_id (Int64, or String for ids that are not integers), rating (Float32, null
                  when the log has none), timestamp (Int64 seconds), row (UInt32: 0-based position in the
                  source file, the tie-break for equal timestamps).
    items:        item_id plus descriptive columns (MovieLens: title without the year, year Int32,
                  genres List[String]); may hold items that were never rated, and lack rated ones.
    text_columns: the item columns that describe an item in words.
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    text_columns: tuple[str, ...]


INTERACTION_COLUMNS = (schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP, schema.ROW)
