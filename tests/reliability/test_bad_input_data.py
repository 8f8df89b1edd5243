"""Property-based: whatever bytes a log or a MovieLens file holds, preparing it gives a dataset or one of our
documented errors (a RecsysError with a one-line message), never another exception.

Files are written into a fresh temporary folder per example and read through `prepare_dataset` (no cache), as
`recsys data prepare` does. Examples are derandomized (fixed) so that CI sees the same cases every run.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recsys.config import DataConfig
from recsys.data.prepare import prepare_dataset
from recsys.errors import RecsysError

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- field values: what real logs get wrong -------------------------------------------------------------------
INTS = st.one_of(st.integers(-10, 10), st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, -(2**63), 2**64]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True).map(repr)  # 'nan', 'inf', '1e+300', '-0.0'
TEXT = st.text(max_size=12)
ODD = st.sampled_from(["", " ", "NaN", "nan", "NULL", "null", "\"", "\"\"", "'", "1,5", "1;5", "\t", "::", "|",
                       "2024-13-45", "2024-01-01T00:00:00", "2024-01-01", "1e999", "0x10", "١٢٣", "ｱ", "\u00e9", "\x00"])
FIELD = st.one_of(INTS.map(str), FLOATS, TEXT, ODD)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16", "utf-8-sig", "cp1252"])


def encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


@st.composite
def delimited(draw: st.DrawFn, header: list[str] | None, width: int, separator: str) -> bytes:
    """Rows of `width` odd fields (sometimes one too few or too many), duplicated rows, an optional header,
    in one of several encodings, sometimes with invalid UTF-8 spliced in or cut at an arbitrary byte."""
    plausible = st.lists(st.one_of(INTS.map(str), st.integers(0, 30).map(str)), min_size=width, max_size=width)
    odd = st.lists(FIELD, min_size=max(width - 1, 0), max_size=width + 1)
    rows = draw(st.lists(st.one_of(plausible, plausible, plausible, odd), max_size=12))
    rows = rows + draw(st.lists(st.sampled_from(rows), max_size=4)) if rows else rows  # duplicated rows
    keep_header = header is not None and (not rows or draw(st.integers(0, 9)) > 0)  # a missing header, at times
    lines = ([separator.join(header)] if keep_header else []) + [separator.join(row) for row in rows]
    data = encode("\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"])), draw(ENCODINGS))
    damage = draw(st.sampled_from(["none"] * 6 + ["invalid-utf8", "cut", "nul"]))
    if damage == "invalid-utf8" and data:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + b"\xff\xfe\xc3(" + data[at:]
    elif damage == "cut" and data:
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "nul":
        data = data + b"\x00" * draw(st.integers(1, 8))
    return data


def outcome(write: Callable[[Path], DataConfig]) -> None:
    """Prepare what `write` put into a fresh folder: a dataset or a RecsysError with a one-line message."""
    with tempfile.TemporaryDirectory() as folder:
        cfg = write(Path(folder))
        try:
            ds = prepare_dataset(cfg, use_cache=False)
        except RecsysError as exc:
            message = str(exc)
            assert message and "\n" not in message, repr(message)
            event(f"{type(exc).__name__}")
            return
        event("prepared")
        assert ds.n_users >= 1 and ds.n_items >= 1
        lengths = ds.sequences["items"].list.len()
        assert int(lengths.sum()) == ds.n_interactions
        assert all(math.isfinite(x) for x in ds.sequences["items"].explode().to_list())


def custom(folder: Path, name: str, data: bytes, separator: str, rating: bool) -> DataConfig:
    (folder / name).write_bytes(data)
    return DataConfig(name="custom", interactions_file=str(folder / name), user_column="user", item_column="item",
                      timestamp_column="time", rating_column="rating" if rating else None, separator=separator,
                      min_user_interactions=1, cache_dir=str(folder / "cache"))


@SETTINGS
@given(data=st.data(), separator=st.sampled_from([",", "\t", ";"]), rating=st.booleans())
def test_custom_delimited_logs(data: st.DataObject, separator: str, rating: bool) -> None:
    header = ["user", "item", "time"] + (["rating"] if rating else [])
    content = data.draw(delimited(header, len(header), separator))
    outcome(lambda folder: custom(folder, "log.csv" if separator != "\t" else "log.tsv", content, separator, rating))


@SETTINGS
@given(content=st.one_of(st.binary(max_size=300),
                         st.text(alphabet="0123456789,\t\n\r-.eE naN\"", max_size=200).map(str.encode)),
       separator=st.sampled_from([",", "\t"]))
def test_custom_logs_of_arbitrary_bytes(content: bytes, separator: str) -> None:
    outcome(lambda folder: custom(folder, "log.csv", b"user,item,time\n" + content, separator, False))
    outcome(lambda folder: custom(folder, "raw.csv", content, separator, False))


MOVIELENS = {  # release -> (ratings file, its header or None, movies file, a valid movies line)
    "ml-latest-small": ("ratings.csv", ["userId", "movieId", "rating", "timestamp"], ",",
                        "movies.csv", 'movieId,title,genres\n1,"Toy Story (1995)",Animation|Comedy\n'),
    "ml-1m": ("ratings.dat", None, "::", "movies.dat", "1::Toy Story (1995)::Animation|Comedy\n"),
    "ml-100k": ("u.data", None, "\t", "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n"),
}


@SETTINGS
@given(data=st.data(), release=st.sampled_from(sorted(MOVIELENS)), broken=st.sampled_from(["ratings", "movies"]))
def test_movielens_files(data: st.DataObject, release: str, broken: str) -> None:
    ratings_name, header, separator, movies_name, movies_line = MOVIELENS[release]
    good_ratings = separator.join(["1", "1", "4.0", "964982703"]) + "\n"
    if header is not None:
        good_ratings = ",".join(header) + "\n" + good_ratings
    if broken == "ratings":
        ratings, movies = data.draw(delimited(header, 4, separator)), movies_line.encode("latin-1")
    else:
        width = {"ml-latest-small": 3, "ml-1m": 3, "ml-100k": 24}[release]
        movie_header = ["movieId", "title", "genres"] if release == "ml-latest-small" else None
        ratings, movies = good_ratings.encode(), data.draw(delimited(movie_header, width, "|" if release == "ml-100k"
                                                                      else separator))

    def write(folder: Path) -> DataConfig:
        (folder / ratings_name).write_bytes(ratings)
        (folder / movies_name).write_bytes(movies)
        return DataConfig(name=release, path=str(folder), min_user_interactions=1, cache_dir=str(folder / "cache"))

    outcome(write)


def test_parquet_timestamps_that_are_not_usable(tmp_path: Path) -> None:
    import polars as pl
    import pytest

    from recsys.errors import DataError

    for name, values in (("nan", [1.0, float("nan")]), ("inf", [1.0, float("inf")]), ("null", [1.0, None]),
                         ("huge", pl.Series([1, 2**64 - 1], dtype=pl.UInt64))):
        path = tmp_path / f"{name}.parquet"
        pl.DataFrame({"user": [1, 1], "item": [1, 2], "time": values}).write_parquet(path)
        cfg = DataConfig(name="custom", interactions_file=str(path), user_column="user", item_column="item",
                         timestamp_column="time", min_user_interactions=1, cache_dir=str(tmp_path / "cache"))
        with pytest.raises(DataError, match=rf"{name}.parquet: row 2: column 'time'"):
            prepare_dataset(cfg, use_cache=False)
