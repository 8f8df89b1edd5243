"""Readers for the MovieLens releases, each in its own on-disk format.

| release                                 | ratings                       | movies                                  |
|-----------------------------------------|-------------------------------|-----------------------------------------|
| ml-100k                                 | `u.data`, tab-separated       | `u.item`, `|`-separated, 19 genre flags |
| ml-1m, ml-10m (folder `ml-10M100K`)     | `ratings.dat`, `::`-separated | `movies.dat`, `::`-separated            |
| ml-20m, ml-25m, ml-32m, ml-latest-small | `ratings.csv`, header         | `movies.csv`, quoted titles             |

Old releases are latin-1; every reader returns the same `RawData` shape (see `recsys.data.raw`).
F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from recsys.data import schema
from recsys.data.io import Member, Source, TextFormat, read_delimited, require_rows
from recsys.data.raw import RawData

# The order of the 19 flags in u.item (ml-100k's u.genre lists the same names).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"  # ml-20m and later write this instead of an empty genre list
MOVIELENS_TEXT_COLUMNS = (schema.TITLE, schema.YEAR, schema.GENRES)

RATING_DTYPES: dict[str, pl.DataType] = {
    schema.USER_ID: pl.Int64(),
    schema.ITEM_ID: pl.Int64(),
    schema.RATING: pl.Float32(),  # half stars at most: exact in 32 bits
    schema.TIMESTAMP: pl.Int64(),
}
RATING_FIELDS = tuple(RATING_DTYPES)

TAB = TextFormat(separator="\t", header=False)
DAT = TextFormat(separator="\t", header=False, source_separator="::", legacy_encoding=True)
PIPE = TextFormat(separator="|", header=False, legacy_encoding=True)
CSV = TextFormat(separator=",", header=True, quote_char='"')
CSV_RATING_COLUMNS = {
    "userId": schema.USER_ID,
    "movieId": schema.ITEM_ID,
    "rating": schema.RATING,
    "timestamp": schema.TIMESTAMP,
}


# ---------------------------------------------------------------------------------------------------------
# Expression helpers for the item table


def title_without_year() -> pl.Expr:
    """'Toy Story (1995)' -> 'Toy Story'; titles without a trailing year stay as they are."""
    return pl.col(schema.TITLE).str.replace(r"\s*\(\d{4}\)\s*$", "").str.strip_chars()


def year_from_title() -> pl.Expr:
    """The trailing '(1995)' of a title as Int32, null when the title has none."""
    return pl.col(schema.TITLE).str.extract(r"\((\d{4})\)\s*$", 1).cast(pl.Int32).alias(schema.YEAR)


def split_genres() -> pl.Expr:
    """'Animation|Comedy' -> ['Animation', 'Comedy']; '(no genres listed)' -> []."""
    return pl.col(schema.GENRES).str.split("|").list.filter(pl.element() != NO_GENRES)


def genres_from_flags(names: tuple[str, ...]) -> pl.Expr:
    """One 0/1 column per genre -> the list of genres whose flag is 1, in flag order."""
    return pl.concat_list([pl.when(pl.col(name) == 1).then(pl.lit(name)) for name in names]).list.drop_nulls()


def with_title_and_year(items: pl.LazyFrame) -> pl.LazyFrame:
    """Split 'Title (Year)' into title and year, in that order after item_id."""
    return items.with_columns(year_from_title()).with_columns(title_without_year())


# ---------------------------------------------------------------------------------------------------------
# Per-format readers


def read_headerless_ratings(member: Member, fmt: TextFormat) -> pl.DataFrame:
    """`user, item, rating, timestamp` lines without a header (u.data, ratings.dat)."""
    frame = require_rows(read_delimited(member, fmt, RATING_DTYPES, positional=RATING_FIELDS), member)
    return frame.with_row_index(schema.ROW).select(RATING_FIELDS + (schema.ROW,))


def read_csv_ratings(member: Member) -> pl.DataFrame:
    """ratings.csv with the header userId,movieId,rating,timestamp."""
    dtypes = {raw: RATING_DTYPES[ours] for raw, ours in CSV_RATING_COLUMNS.items()}
    frame = require_rows(read_delimited(member, CSV, dtypes), member)
    return frame.rename(CSV_RATING_COLUMNS).with_row_index(schema.ROW).select(RATING_FIELDS + (schema.ROW,))


def read_dat_movies(member: Member) -> pl.DataFrame:
    """movies.dat: `item::Title (Year)::Genre|Genre`."""
    fields = (schema.ITEM_ID, schema.TITLE, schema.GENRES)
    dtypes = {schema.ITEM_ID: pl.Int64(), schema.TITLE: pl.String(), schema.GENRES: pl.String()}
    frame = read_delimited(member, DAT, dtypes, positional=fields)
    return _finish_movies(frame.lazy().with_columns(split_genres()))


def read_csv_movies(member: Member) -> pl.DataFrame:
    """movies.csv: movieId,title,genres with quoted titles."""
    dtypes = {"movieId": pl.Int64(), "title": pl.String(), "genres": pl.String()}
    frame = read_delimited(member, CSV, dtypes).rename({"movieId": schema.ITEM_ID})
    return _finish_movies(frame.lazy().with_columns(split_genres()))


def read_uitem_movies(member: Member) -> pl.DataFrame:
    """u.item: item|title|release date|video release date|IMDb URL|19 genre flags."""
    fields = (schema.ITEM_ID, schema.TITLE, "release_date", "video_release_date", "url") + ML100K_GENRES
    dtypes = {schema.ITEM_ID: pl.Int64(), schema.TITLE: pl.String()} | {g: pl.Int8() for g in ML100K_GENRES}
    frame = read_delimited(member, PIPE, dtypes, positional=fields)
    return _finish_movies(frame.lazy().with_columns(genres_from_flags(ML100K_GENRES).alias(schema.GENRES)))


def _finish_movies(items: pl.LazyFrame) -> pl.DataFrame:
    return with_title_and_year(items).select(schema.ITEM_ID, *MOVIELENS_TEXT_COLUMNS).collect()


@dataclass(frozen=True)
class MovieLensReader:
    """How to read one release: which members hold ratings and movies, and their parsers."""

    name: str
    ratings_file: str
    movies_file: str
    read_ratings: Callable[[Member], pl.DataFrame]
    read_movies: Callable[[Member], pl.DataFrame]

    def members(self, source: Source) -> list[Member]:
        """The raw files this reader will read (missing ones are a DataError naming the file)."""
        return [source.require(self.ratings_file), source.require(self.movies_file)]

    def read(self, source: Source) -> RawData:
        """Interactions and the item table of this release, from a folder or zip."""
        ratings, movies = self.members(source)
        return RawData(self.read_ratings(ratings), self.read_movies(movies), MOVIELENS_TEXT_COLUMNS)


def _tab_ratings(member: Member) -> pl.DataFrame:
    return read_headerless_ratings(member, TAB)


def _dat_ratings(member: Member) -> pl.DataFrame:
    return read_headerless_ratings(member, DAT)


def _csv_release(name: str) -> MovieLensReader:
    return MovieLensReader(name, "ratings.csv", "movies.csv", read_csv_ratings, read_csv_movies)


RATINGS_FORMATS: dict[str, TextFormat] = {"u.data": TAB, "ratings.dat": DAT, "ratings.csv": CSV}
"""Layout of each ratings file name, for the lazy scan of recsys.data.streaming."""


READERS: dict[str, MovieLensReader] = {
    "ml-100k": MovieLensReader("ml-100k", "u.data", "u.item", _tab_ratings, read_uitem_movies),
    "ml-1m": MovieLensReader("ml-1m", "ratings.dat", "movies.dat", _dat_ratings, read_dat_movies),
    # ml-10m unpacks into a folder named ml-10M100K; Source.find looks one folder down, so no special case.
    "ml-10m": MovieLensReader("ml-10m", "ratings.dat", "movies.dat", _dat_ratings, read_dat_movies),
    "ml-20m": _csv_release("ml-20m"),
    "ml-25m": _csv_release("ml-25m"),
    "ml-32m": _csv_release("ml-32m"),
    "ml-latest-small": _csv_release("ml-latest-small"),
}
"""Every MovieLens release recsys reads, by the name used in configs and on the command line."""
