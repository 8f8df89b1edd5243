"""Download (or copy) a MovieLens release into recsys' raw-data folder, verify it, and prepare it.

    python data_scripts/fetch_movielens.py ml-1m                 # download from files.grouplens.org
    python data_scripts/fetch_movielens.py ml-1m --from ml-1m.zip  # a zip or folder you already have

Downloads come from https://files.grouplens.org/datasets/movielens/<name>.zip and are checked against the
zip's md5 (stored below where known, else read from the `.md5` file GroupLens publishes next to the zip).
Files of known content (e.g. ml-1m's ratings.dat) are checked too, for downloads and local copies alike.
The raw files land in <cache>/raw/<name>/ (<cache>: --cache-dir, $RECSYS_CACHE or ~/.cache/recsys), which is
where `recsys data prepare <name>` looks when no path is given. The folder is replaced only after every
file is verified and copied.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import urllib.request
from pathlib import Path

from recsys.config import DataConfig
from recsys.data.io import Member, md5_file, open_source
from recsys.data.movielens import READERS
from recsys.data.prepare import dataset_stats, prepare_dataset, prepared_dir, raw_dir
from recsys.durable import folder_beside, publish_folder
from recsys.errors import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
ZIP_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}
"""Published md5 of each release zip. ml-32m and ml-latest-small: read from <zip>.md5 at download time
(ml-latest-small is a development release that GroupLens updates, so no fixed value can be stored)."""
CONTENT_CHECKSUMS: dict[str, dict[str, tuple[str, str]]] = {
    "ml-1m": {
        "ratings.dat": ("md5", "a89aa3591bc97d6d4e0c89459ff39362"),
        "movies.dat": ("sha256", "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"),
    },
    "ml-100k": {
        "u.data": ("sha256", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),
        "u.item": ("sha256", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"),
    },
}
"""Checksums of the (decompressed) content of individual files, for local copies without the zip."""
EXTRA_FILES = ("README", "README.txt")  # licence text travels with the data


def fetch(name: str, source_path: str | None, cache_dir: str | None) -> Path:
    """Install release `name` from a download or a local zip/folder into its raw folder; return the folder."""
    if name not in READERS:
        raise DataError(f"dataset {name!r} is unknown (known: {', '.join(READERS)})")
    target = raw_dir(name, cache_dir)
    if source_path is None:
        zip_path = download(name, target.parent / ".downloads")
        source = open_source(zip_path)
    else:
        source = open_source(source_path)
    members = READERS[name].members(source) + [m for f in EXTRA_FILES if (m := source.find(f)) is not None]
    verify_content(name, members)
    install(members, target)
    return target


def download(name: str, folder: Path) -> Path:
    """Download <name>.zip with a progress bar and check its md5; return the zip's path."""
    from tqdm import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    url = f"{BASE_URL}/{name}.zip"
    expected = ZIP_MD5.get(name) or published_md5(url)
    final = folder / f"{name}.zip"
    if final.is_file() and md5_file(final) == expected:
        return final
    part = folder / f"{name}.zip.part"
    with urllib.request.urlopen(url) as response, open(part, "wb") as out:  # noqa: S310 (fixed https URL)
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"{name}.zip") as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    check_md5(part, expected, url)
    part.replace(final)
    return final


def published_md5(url: str) -> str:
    """The md5 GroupLens publishes in `<url>.md5` (any 32-hex-digit token in it)."""
    with urllib.request.urlopen(url + ".md5") as response:  # noqa: S310 (fixed https URL)
        text = response.read().decode("ascii", errors="replace")
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if match is None:
        raise DataError(f"{url}.md5: no md5 sum in it")
    return match.group(0).lower()


def check_md5(path: Path, expected: str, label: str) -> None:
    actual = md5_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise DataError(f"{label}: checksum mismatch: md5 {actual}, expected {expected} (download removed; retry)")


def verify_content(name: str, members: list[Member]) -> None:
    """Check every member whose decompressed content has a known checksum."""
    known = CONTENT_CHECKSUMS.get(name, {})
    for member in members:
        plain = Path(member.name).name.removesuffix(".gz")
        if plain not in known:
            continue
        algorithm, expected = known[plain]
        actual = hashlib.new(algorithm, member.read_bytes()).hexdigest()
        if actual != expected:
            raise DataError(f"{member.label}: checksum mismatch: {algorithm} {actual}, expected {expected}")


def install(members: list[Member], target: Path) -> None:
    """Copy `members` (keeping .gz compression as found) into `target`, replacing it only when complete."""
    with folder_beside(target) as tmp:
        for member in members:
            (tmp / Path(member.name).name).write_bytes(_raw_bytes(member))
        publish_folder(tmp, target, replace=True)  # fsynced; an earlier install is removed once this one is in


def _raw_bytes(member: Member) -> bytes:
    """The member's stored bytes (still gzipped if it was), so the copy is byte-identical."""
    if member.in_zip:
        import zipfile

        with zipfile.ZipFile(member.container) as archive:
            return archive.read(member.name)
    return (member.container / member.name).read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help=f"release: {', '.join(READERS)}")
    parser.add_argument("--from", dest="source", metavar="PATH", help="local zip or folder instead of downloading")
    parser.add_argument("--cache-dir", help="cache folder (None: $RECSYS_CACHE or ~/.cache/recsys)")
    parser.add_argument("--preset", default="raw", help="preset to prepare afterwards (raw or papers)")
    parser.add_argument("--no-prepare", action="store_true", help="only install the raw files")
    args = parser.parse_args(argv)
    try:
        folder = fetch(args.name, args.source, args.cache_dir)
        print(f"raw files: {folder}")
        if not args.no_prepare:
            cfg = DataConfig(name=args.name, preset=args.preset, cache_dir=args.cache_dir)
            ds = prepare_dataset(cfg, progress=sys.stderr.isatty())
            stats = dataset_stats(ds)
            print(
                f"prepared: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions"
            )
            print(f"cache: {prepared_dir(cfg, ds.fingerprint)}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
