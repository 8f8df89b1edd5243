"""MovieLens readers: real releases (counts) and tiny hand-written ones (parsing details)."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import polars as pl
import pytest

from recsys.data import schema
from recsys.data.io import open_source
from recsys.data.movielens import READERS
from recsys.errors import DataError

from .conftest import TINY_MOVIES, TINY_RATINGS, write_tiny_ml1m


def test_registry_names() -> None:
    assert set(READERS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small"}


def test_dat_release_parses_ratings_rows_and_latin1_titles(tiny_ml1m: Path) -> None:
    raw = READERS["ml-1m"].read(open_source(tiny_ml1m))
    frame = raw.interactions
    assert frame.columns == [schema.USER_ID, schema.ITEM_ID, schema.RATING, schema.TIMESTAMP, schema.ROW]
    assert frame.row(0) == (1, 20, 5.0, 100, 0)
    assert frame[schema.ROW].to_list() == list(range(9))
    items = {row[schema.ITEM_ID]: row for row in raw.items.iter_rows(named=True)}
    assert items[10] == {
        "item_id": 10,
        "title": "Toy Story",
        "year": 1995,
        "genres": ["Animation", "Children's", "Comedy"],
    }
    assert items[30]["title"] == "Café au lait"
    assert items[40]["title"] == "Untitled" and items[40]["year"] is None
    assert raw.text_columns == ("title", "year", "genres")


def test_csv_release_with_quoted_titles_and_no_genres(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,10\n1,2,0.5,11\n")
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Nothing (2003),(no genres listed)\n"
    )
    raw = READERS["ml-25m"].read(open_source(tmp_path))
    assert raw.interactions.rows() == [(1, 1, 4.5, 10, 0), (1, 2, 0.5, 11, 1)]
    assert raw.items.rows() == [
        (1, "American President, The", 1995, ["Comedy", "Drama", "Romance"]),
        (2, "Nothing", 2003, []),
    ]


def test_u_item_genre_flags(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t7\t3\t881250949\n")
    flags = ["0"] * 19
    flags[1] = flags[16] = "1"  # Action, Thriller
    (tmp_path / "u.item").write_bytes(
        ("7|Se\xf1or (1996)|01-Jan-1996||http://x|" + "|".join(flags) + "\n").encode("latin-1")
    )
    raw = READERS["ml-100k"].read(open_source(tmp_path))
    assert raw.items.rows() == [(7, "Señor", 1996, ["Action", "Thriller"])]


def test_ml10m_folder_name_inside_zip(tmp_path: Path) -> None:
    archive = tmp_path / "ml-10m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-10M100K/ratings.dat", "1::122::5::838985046\n")
        zf.writestr("ml-10M100K/movies.dat", "122::Boomerang (1992)::Comedy|Romance\n")
    raw = READERS["ml-10m"].read(open_source(archive))
    assert raw.interactions.rows() == [(1, 122, 5.0, 838985046, 0)]


def test_missing_csv_column_and_wrong_separator(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A (1999),Drama\n")
    (tmp_path / "ratings.csv").write_text("userId,itemId,rating,timestamp\n1,1,4,10\n")
    with pytest.raises(DataError, match=r"ratings\.csv: line 1: missing column 'movieId'"):
        READERS["ml-latest-small"].read(open_source(tmp_path))
    (tmp_path / "ratings.csv").write_text("userId;movieId;rating;timestamp\n1;1;4;10\n")
    with pytest.raises(DataError, match=r"missing column 'userId' \(wrong separator\?\)"):
        READERS["ml-latest-small"].read(open_source(tmp_path))
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,10\nu2,1,4,10\n")
    with pytest.raises(DataError, match=r"ratings\.csv: line 3: column 'userId': not a number: 'u2'"):
        READERS["ml-latest-small"].read(open_source(tmp_path))


def test_missing_movies_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text(TINY_RATINGS)
    with pytest.raises(DataError, match=r"no movies\.dat"):
        READERS["ml-1m"].read(open_source(tmp_path))


def test_gzipped_members(tmp_path: Path) -> None:
    folder = tmp_path / "gz"
    folder.mkdir()
    (folder / "ratings.dat.gz").write_bytes(gzip.compress(TINY_RATINGS.encode()))
    (folder / "movies.dat.gz").write_bytes(gzip.compress(TINY_MOVIES.encode("latin-1")))
    plain = READERS["ml-1m"].read(open_source(write_tiny_ml1m(tmp_path / "plain")))
    zipped = READERS["ml-1m"].read(open_source(folder))
    assert zipped.interactions.equals(plain.interactions) and zipped.items.equals(plain.items)


# ---- real releases --------------------------------------------------------------------------------------


def test_ml100k_counts(shared_data: Path) -> None:
    raw = READERS["ml-100k"].read(open_source(shared_data / "ml-100k"))
    frame = raw.interactions
    assert (frame.height, frame[schema.USER_ID].n_unique(), frame[schema.ITEM_ID].n_unique()) == (100_000, 943, 1_682)
    assert raw.items.height == 1_682
    assert raw.items.filter(pl.col(schema.ITEM_ID) == 1).row(0) == (
        1,
        "Toy Story",
        1995,
        ["Animation", "Children's", "Comedy"],
    )


def test_ml1m_raw_file_shape(shared_data: Path) -> None:
    raw = READERS["ml-1m"].read(open_source(shared_data / "ml-1m"))
    frame = raw.interactions
    assert frame.height == 1_000_209
    assert (frame[schema.TIMESTAMP].min(), frame[schema.TIMESTAMP].max()) == (956703932, 1046454590)
    assert raw.items.height == 3_883
