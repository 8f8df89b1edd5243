"""Reading raw files from wherever a release lives.

A *source* is a folder, or a release's original zip (e.g. `ml-1m.zip` holding `ml-1m/ratings.dat`). Inside
it a *member* is found by its file name, plain or gzipped (`ratings.dat` or `ratings.dat.gz`), at the top or
one folder down (the zip's and the unpacked release's `ml-1m/` level). Writing is `recsys.durable`'s job.
"""

from __future__ import annotations

import gzip
import hashlib
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """One raw file of a source: a plain file, a gzipped file, or a zip entry (itself maybe gzipped)."""

    container: Path
    """The folder or zip file the member lives in."""
    name: str
    """Path inside the container (relative to the folder, or the zip entry name)."""
    in_zip: bool

    @property
    def gzipped(self) -> bool:
        return self.name.endswith(".gz")

    @property
    def label(self) -> str:
        """How messages name the file: a real path, or `archive.zip:entry`."""
        if self.in_zip:
            return f"{self.container}:{self.name}"
        return str(self.container / self.name)

    @property
    def path(self) -> Path | None:
        """The file on disk when polars can read it directly (plain, not zipped, not gzipped)."""
        if self.in_zip or self.gzipped:
            return None
        return self.container / self.name

    def read_bytes(self) -> bytes:
        """The member's content, decompressed; a truncated or corrupt archive is a DataError."""
        try:
            if self.in_zip:
                with zipfile.ZipFile(self.container) as archive:
                    data = archive.read(self.name)
            else:
                data = (self.container / self.name).read_bytes()
            return gzip.decompress(data) if self.gzipped else data
        except (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.label}: truncated or corrupt compressed file ({exc})") from None
        except OSError as exc:
            raise DataError(f"{self.label}: cannot read ({exc.strerror or exc})") from None

    def polars_input(self) -> Path | bytes:
        """What `pl.read_csv` should get: the path of a plain file (memory-mapped, no copy), else bytes."""
        return self.path if self.path is not None else self.read_bytes()

    def identity(self) -> str:
        """A content identity for cache fingerprints: a file's sha256, or a zip entry's CRC-32 and size.

        Zip entries use the archive's own CRC so that checking a cache never decompresses the release.
        """
        if self.in_zip:
            with zipfile.ZipFile(self.container) as archive:
                info = archive.getinfo(self.name)
            return f"zip:{self.name}:{info.CRC:08x}:{info.file_size}"
        return f"sha256:{sha256_file(self.container / self.name)}"


@dataclass(frozen=True)
class Source:
    """A folder or zip file that holds a dataset's raw files."""

    root: Path

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()

    def find(self, name: str) -> Member | None:
        """The member called `name` (or `name.gz`), at the top or one folder down; None if absent."""
        wanted = (name, name + ".gz")
        if self.is_zip:
            return self._find_in_zip(wanted)
        for candidate in wanted:
            if (self.root / candidate).is_file():
                return Member(self.root, candidate, in_zip=False)
        for sub in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for candidate in wanted:
                if (sub / candidate).is_file():
                    return Member(self.root, f"{sub.name}/{candidate}", in_zip=False)
        return None

    def require(self, name: str) -> Member:
        """Like `find`, but a missing member is a DataError naming the source and the file."""
        member = self.find(name)
        if member is None:
            raise DataError(f"{self.root}: no {name} (or {name}.gz) in this {'zip' if self.is_zip else 'folder'}")
        return member

    def _find_in_zip(self, wanted: tuple[str, ...]) -> Member | None:
        try:
            with zipfile.ZipFile(self.root) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise DataError(f"{self.root}: not a zip file, or a truncated one") from None
        # Shallowest match first: the release's own `ml-1m/ratings.dat`, not some nested copy.
        matches = sorted((n for n in names if n.rsplit("/", 1)[-1] in wanted), key=_depth_then_name)
        return Member(self.root, matches[0], in_zip=True) if matches else None


def open_source(path: str | Path) -> Source:
    """A Source for a folder or a zip; anything else is a DataError naming the path."""
    root = Path(path).expanduser()
    if root.is_dir():
        return Source(root)
    if root.is_file():
        if not zipfile.is_zipfile(root):
            raise DataError(f"{root}: expected a folder or a .zip of the raw files, got another kind of file")
        return Source(root)
    raise DataError(f"{root}: no such file or folder")


def _depth_then_name(name: str) -> tuple[int, str]:
    return (name.count("/"), name)


def spool_member(member: Member, fmt: TextFormat, dest: Path) -> Path:
    """Copy a member to the plain file `dest`, decompressed and with `fmt.source_separator` replaced by
    `fmt.separator`, a chunk at a time: what a lazy scan of a zipped, gzipped or `::`-separated log reads, never
    the whole file in memory (`read_bytes` holds it all). Errors are DataErrors as in `read_bytes`."""
    old = fmt.source_separator.encode() if fmt.source_separator else None
    new = fmt.separator.encode()
    try:
        with ExitStack() as stack:
            source = _open_member(member, stack)
            out = stack.enter_context(open(dest, "wb"))
            carry = b""
            while chunk := source.read(_CHUNK):
                if old is None:
                    out.write(chunk)
                    continue
                # Replace whole lines only: a separator never spans a line end, but it may span two chunks.
                chunk = carry + chunk
                cut = chunk.rfind(b"\n") + 1
                out.write(chunk[:cut].replace(old, new))
                carry = chunk[cut:]
            if carry:
                out.write(carry.replace(old, new) if old is not None else carry)
    except (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{member.label}: truncated or corrupt compressed file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{member.label}: cannot read ({exc.strerror or exc})") from None
    return dest


def _open_member(member: Member, stack: ExitStack) -> Any:
    """A binary file object over the member's decompressed bytes, closed with `stack`."""
    if member.in_zip:
        archive = stack.enter_context(zipfile.ZipFile(member.container))
        raw: Any = stack.enter_context(archive.open(member.name))
    else:
        raw = stack.enter_context(open(member.container / member.name, "rb"))
    return stack.enter_context(gzip.open(raw)) if member.gzipped else raw


# ---------------------------------------------------------------------------------------------------------
# Checksums


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return _hash_file(path, hashlib.sha256())


def md5_file(path: str | Path) -> str:
    """Hex md5 of a file's bytes (GroupLens publishes md5 sums of its zips)."""
    return _hash_file(path, hashlib.md5())


def _hash_file(path: str | Path, digest: Any) -> str:
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return str(digest.hexdigest())


# ---------------------------------------------------------------------------------------------------------
# Delimited text with typed columns and line-numbered errors


@dataclass(frozen=True)
class TextFormat:
    """How a delimited file is laid out."""

    separator: str
    """The separator polars splits on (one byte)."""
    header: bool
    """True: the first line names the columns. False: columns are positional."""
    source_separator: str | None = None
    """A multi-character separator in the file (MovieLens `::`), replaced by `separator` before parsing."""
    legacy_encoding: bool = False
    """The file may be latin-1 (ml-100k, ml-1m): decode as UTF-8 when valid, else as latin-1, before parsing."""
    quote_char: str | None = None
    """CSV quote character (None: no quoting, as in the `.dat` and `u.*` files)."""

    @property
    def shown_separator(self) -> str:
        return repr(self.source_separator or self.separator)


def read_delimited(
    member: Member,
    fmt: TextFormat,
    columns: dict[str, pl.DataType],
    positional: tuple[str, ...] = (),
) -> pl.DataFrame:
    """Read the named `columns` of a delimited file with their dtypes, in file order.

    Headerless files name every field in `positional` (its length is the number of fields per line); files
    with a header must contain every key of `columns`. Empty required values, non-numeric numbers, missing
    columns and a wrong separator are DataErrors naming the file, the line and the value.
    """
    data = _prepared_bytes(member, fmt)
    if fmt.header:
        _check_header(member, fmt, data, list(columns))
    # Headerless files are read whole (every field named, unneeded ones as text) and then narrowed: polars
    # cannot combine positional names with a column selection.
    dtypes = columns if fmt.header else {name: columns.get(name, pl.String()) for name in positional}
    selection = list(columns) if fmt.header else None
    try:
        frame = pl.read_csv(data, **_csv_options(fmt, positional), columns=selection, schema_overrides=dtypes)
        frame = frame.select(list(columns))
    except pl.exceptions.PolarsError:
        frame = None
    if frame is None or sum(frame.null_count().row(0)) > 0:
        raise _diagnose(member, fmt, data, columns, positional)
    return frame


def require_rows(frame: pl.DataFrame, member: Member) -> pl.DataFrame:
    """`frame` when it has rows; a log without a single interaction (an empty file, a header alone) is a
    DataError naming the file, not an empty dataset that fails later, far from its cause."""
    if frame.height == 0:
        raise no_rows_error(member)
    return frame


def no_rows_error(member: Member) -> DataError:
    """`require_rows`'s error, for a reader that counted the rows without holding them."""
    return DataError(f"{member.label}: no interactions in this file (no data rows)")


def _prepared_bytes(member: Member, fmt: TextFormat) -> Path | bytes:
    if not fmt.legacy_encoding and fmt.source_separator is None:
        return member.polars_input()
    data = member.read_bytes()
    if fmt.legacy_encoding:
        data = _to_utf8(data)
    if fmt.source_separator is not None:
        # One bytes.replace is ~10x faster than splitting strings in polars, and no field contains the
        # target separator (numbers, titles and `|`-joined genres have no tabs).
        data = data.replace(fmt.source_separator.encode(), fmt.separator.encode())
    return data


def _csv_options(fmt: TextFormat, positional: tuple[str, ...]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "separator": fmt.separator,
        "has_header": fmt.header,
        "quote_char": fmt.quote_char,
        "raise_if_empty": False,
    }
    if not fmt.header:
        options["new_columns"] = list(positional)
    return options


def _to_utf8(data: bytes) -> bytes:
    # Releases disagree (ml-1m's movies.dat is latin-1, later files UTF-8); valid UTF-8 is almost never
    # accidental latin-1, so trying UTF-8 first is safe.
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")


def _check_header(member: Member, fmt: TextFormat, data: Path | bytes, required: list[str]) -> None:
    try:
        found = pl.read_csv(data, separator=fmt.separator, quote_char=fmt.quote_char, n_rows=0).columns
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{member.label}: cannot read the header line ({_first_line(exc)})") from None
    missing = [name for name in required if name not in found]
    if missing:
        hint = " (wrong separator?)" if len(found) == 1 and len(required) > 1 else ""
        raise DataError(
            f"{member.label}: line 1: missing column {missing[0]!r}{hint}; "
            f"found {', '.join(map(repr, found[:8]))}, separator {fmt.shown_separator}"
        )


def scan_delimited(
    member: Member,
    fmt: TextFormat,
    columns: dict[str, pl.DataType],
    positional: tuple[str, ...],
    path: Path,
    row_index: str,
) -> pl.LazyFrame:
    """The lazy twin of `read_delimited` over a plain file (`path`: the member itself or its `spool_member`
    copy): the named `columns` with their dtypes and a 0-based `row_index` column first. Nothing is read but
    the header; a bad value fails when the scan runs, and `diagnose_delimited` then names it."""
    if fmt.header:
        _check_header(member, fmt, path, list(columns))
        schema_options: dict[str, Any] = {"schema_overrides": columns}
    else:
        # The whole positional schema, so that no field is inferred and a line of another width fails.
        schema_options = {"schema": {name: columns.get(name, pl.String()) for name in positional}}
    scan = pl.scan_csv(path, separator=fmt.separator, has_header=fmt.header, quote_char=fmt.quote_char,
                       raise_if_empty=False, row_index_name=row_index, **schema_options)
    return scan.select(row_index, *columns)


def diagnose_delimited(
    member: Member, fmt: TextFormat, path: Path, columns: dict[str, pl.DataType], positional: tuple[str, ...]
) -> DataError:
    """The DataError `read_delimited` gives for the first bad line of a plain file, found by streaming passes
    over it as text (the file is never held in memory)."""
    try:
        text = _scan_as_text(path, fmt, list(columns))
        return _diagnose(member, fmt, text, columns, positional)
    except pl.exceptions.PolarsError as exc:
        return DataError(f"{member.label}: cannot parse as {fmt.shown_separator}-separated text ({_first_line(exc)})")


def _diagnose(
    member: Member, fmt: TextFormat, data: Path | bytes | pl.LazyFrame, columns: dict[str, pl.DataType],
    positional: tuple[str, ...]
) -> DataError:
    """The error for the first bad line, found by re-reading everything as text (a LazyFrame: already so read)."""
    try:
        text = data if isinstance(data, pl.LazyFrame) else _read_as_text(data, fmt, list(columns)).lazy()
        width = text.collect_schema().len()
    except pl.exceptions.PolarsError as exc:
        return DataError(f"{member.label}: cannot parse as {fmt.shown_separator}-separated text ({_first_line(exc)})")
    first_line = 2 if fmt.header else 1
    if not fmt.header and width < len(positional):
        return DataError(
            f"{member.label}: line 1: expected {len(positional)} fields separated by {fmt.shown_separator}, "
            f"found {width} (wrong separator?)"
        )
    if not fmt.header:
        text = text.rename(dict(zip(text.collect_schema().names(), positional, strict=False))).select(list(columns))
    for name, dtype in columns.items():
        empty = _first_row(text, pl.col(name).is_null(), name)
        if empty is not None:
            if not fmt.header:
                return DataError(
                    f"{member.label}: line {empty[0] + first_line}: expected {len(positional)} fields separated by "
                    f"{fmt.shown_separator}, field {name!r} is missing or empty"
                )
            return DataError(f"{member.label}: line {empty[0] + first_line}: column {name!r} is empty")
        if dtype == pl.String:
            continue
        bad = _first_row(text, pl.col(name).cast(dtype, strict=False).is_null(), name)
        if bad is not None:
            return DataError(f"{member.label}: line {bad[0] + first_line}: column {name!r}: not a number: {bad[1]!r}")
    return DataError(f"{member.label}: cannot parse as {fmt.shown_separator}-separated text")


def _first_row(text: pl.LazyFrame, condition: pl.Expr, column: str) -> tuple[int, str | None] | None:
    """(0-based row, value of `column`) of the first row meeting `condition`, or None; streams."""
    found = (text.with_row_index("_row").filter(condition).select("_row", column).head(1)
             .collect(engine="streaming"))
    return (int(found["_row"][0]), found[column][0]) if found.height else None


def _read_as_text(data: Path | bytes, fmt: TextFormat, columns: list[str]) -> pl.DataFrame:
    """Every field as a string; short lines padded with nulls (headerless: positional column_0, column_1...)."""
    return pl.read_csv(data, **_text_options(fmt, columns))


def _scan_as_text(path: Path, fmt: TextFormat, columns: list[str]) -> pl.LazyFrame:
    """`_read_as_text`, lazily, over a plain file."""
    options = _text_options(fmt, columns)
    selected = options.pop("columns")
    scan = pl.scan_csv(path, **options)
    return scan.select(selected) if selected else scan


def _text_options(fmt: TextFormat, columns: list[str]) -> dict[str, Any]:
    return {
        "separator": fmt.separator,
        "has_header": fmt.header,
        "quote_char": fmt.quote_char,
        "infer_schema": False,
        "truncate_ragged_lines": True,
        "columns": columns if fmt.header else None,
        "raise_if_empty": False,
    }


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
