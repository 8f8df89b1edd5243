"""Sources (folder, zip, gz), members, checksums and typed delimited reads."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import polars as pl
import pytest

from recsys.data.io import (
    TextFormat,
    open_source,
    read_delimited,
    sha256_file,
)
from recsys.errors import DataError

RATINGS = b"1::20::5::100\n1::10::3::100\n"
DAT = TextFormat(separator="\t", header=False, source_separator="::")
DTYPES = {"u": pl.Int64(), "i": pl.Int64(), "r": pl.Float32(), "t": pl.Int64()}


def _read(source_path: Path) -> pl.DataFrame:
    member = open_source(source_path).require("ratings.dat")
    return read_delimited(member, DAT, DTYPES, positional=("u", "i", "r", "t"))


def test_folder_zip_and_gz_sources_read_the_same(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "ratings.dat").write_bytes(RATINGS)
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "ratings.dat.gz").write_bytes(gzip.compress(RATINGS))
    nested = tmp_path / "nested" / "ml-1m"  # an unpacked release inside the folder given
    nested.mkdir(parents=True)
    (nested / "ratings.dat").write_bytes(RATINGS)
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", RATINGS)
    gz_in_zip = tmp_path / "gz.zip"
    with zipfile.ZipFile(gz_in_zip, "w") as zf:
        zf.writestr("ml-1m/ratings.dat.gz", gzip.compress(RATINGS))

    frames = [_read(p) for p in (plain, gz, tmp_path / "nested", archive, gz_in_zip)]
    assert frames[0].rows() == [(1, 20, 5.0, 100), (1, 10, 3.0, 100)]
    for frame in frames[1:]:
        assert frame.equals(frames[0])


def test_member_labels_and_identity(tmp_path: Path) -> None:
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", RATINGS)
    member = open_source(archive).require("ratings.dat")
    assert member.label == f"{archive}:ml-1m/ratings.dat"
    assert member.identity().startswith("zip:ml-1m/ratings.dat:")
    (tmp_path / "ratings.dat").write_bytes(RATINGS)
    folder_member = open_source(tmp_path).require("ratings.dat")
    assert folder_member.identity() == "sha256:" + hashlib.sha256(RATINGS).hexdigest()


def test_missing_source_member_and_bad_zip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no ratings\.dat \(or ratings\.dat\.gz\) in this folder"):
        open_source(tmp_path).require("ratings.dat")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="expected a folder or a .zip"):
        open_source(tmp_path / "notes.txt")


def test_truncated_gzip_is_a_data_error(tmp_path: Path) -> None:
    data = gzip.compress(RATINGS * 1000)
    (tmp_path / "ratings.dat.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"ratings\.dat\.gz: truncated or corrupt"):
        _read(tmp_path)


def test_sha256_of_a_file_is_that_of_its_bytes(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    target.write_bytes(RATINGS * 1000)
    assert sha256_file(target) == hashlib.sha256(RATINGS * 1000).hexdigest()


def test_wrong_separator_and_non_numeric_values_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_bytes(b"1,20,5,100\n")
    with pytest.raises(DataError, match=r"ratings\.dat: line 1: expected 4 fields separated by '::'.*wrong separator"):
        _read(tmp_path)
    (tmp_path / "ratings.dat").write_bytes(b"1::20::5::100\n1::x7::3::100\n")
    with pytest.raises(DataError, match=r"ratings\.dat: line 2: column 'i': not a number: 'x7'"):
        _read(tmp_path)
    (tmp_path / "ratings.dat").write_bytes(b"1::20::5::100\n1::7::3::soon\n")
    with pytest.raises(DataError, match=r"line 2: column 't': not a number: 'soon'"):
        _read(tmp_path)
    (tmp_path / "ratings.dat").write_bytes(b"1::20::5::100\n1::7::3\n")
    with pytest.raises(DataError, match=r"line 2: expected 4 fields"):
        _read(tmp_path)
