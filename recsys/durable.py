"""Durable writes: a file or a folder that a reader sees whole or not at all, and that survives a crash.

Files: the new content goes to a temporary file beside the target (`.<name>.<pid>.<random>.tmp`, same folder,
so the rename never crosses a filesystem), is flushed and fsynced, then `os.replace`d over the target, and the
folder is fsynced so the rename itself is on disk. Until that rename the old file is untouched; a failure
before it (the writer raises, the disk is full) removes the temporary file and leaves the old one as it was.

Folders: built in a temporary sibling (`.<name>.<pid>.<random>.tmp`), every file and subfolder fsynced, then
renamed to the target in one step and the parent fsynced. What happens when the target already exists is the
caller's explicit choice (`publish_folder`'s `replace`): by default nothing is overwritten.

A writer killed by SIGKILL can leave its temporary file or folder behind (nothing runs after a SIGKILL); the
name says so (a dot, the writer's pid, `.tmp`), and `remove_abandoned_folders` deletes those whose writer is
gone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that needs a file name (polars, faiss, torch); when the
    block ends without an error it is fsynced and renamed over `path`. On an error it is removed and `path`
    keeps its old content (or stays absent). The folder must exist: a missing one is FileNotFoundError and
    is not created (a model directory that is gone must not reappear holding only an index)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the block or the fsync failed
    fsync_path(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` durably (see `replacing`)."""
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 to `path` durably (see `replacing`)."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> None:
    """Write `data` as indented JSON (and a final newline) to `path` durably (see `replacing`). The JSON is
    streamed into the temporary file, so a value that cannot be serialised fails part-way through it, and
    `path` keeps its old content."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=sort_keys)
        handle.write("\n")


@contextmanager
def folder_beside(target: str | Path) -> Iterator[Path]:
    """A new, empty temporary folder beside `target` to build it in; pass it to `publish_folder` inside the
    block. Whatever is still there when the block ends (an error, or a build the caller chose not to publish)
    is removed. The parent folder is created if missing."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, target: str | Path, replace: bool = False) -> None:
    """Make the folder `tmp` (built by `folder_beside(target)`) appear at `target` in one step, durably.

    replace=False (what a user asked to have written, such as a saved model): `target` must not exist.
    FileExistsError when it does, before anything moves, and `tmp` is left for `folder_beside` to remove.
    Should a non-empty folder appear there between that check and the rename (another writer), the rename
    fails (ENOTEMPTY) rather than replace it: nothing that was there is lost.

    replace=True (for our own caches and downloads, which are rebuilt at will): an existing `target` is first
    renamed aside to a temporary sibling, the new folder renamed into place, then the old one deleted. If
    the rename into place fails, the old one is put back.
    """
    target = Path(target)
    fsync_tree(tmp)
    if not replace:
        if target.exists():
            raise FileExistsError(f"{target}: already exists; not overwritten")
        os.rename(tmp, target)
        fsync_path(target.parent)
        return
    # named like folder_beside's, so that remove_abandoned_folders also clears one left by a killed writer
    old = target.parent / f".{target.name}.{os.getpid()}.old{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    moved_aside = False
    if target.exists():
        os.rename(target, old)
        moved_aside = True
    try:
        os.rename(tmp, target)
    except BaseException:
        if moved_aside:
            os.rename(old, target)
        raise
    fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_abandoned_folders(target: str | Path) -> None:
    """Delete temporary folders that `folder_beside(target)` made in processes that are gone (killed before
    they published): they can never be renamed into place. A folder whose writer still runs is left alone,
    and so is any folder whose name does not follow the pattern with a pid."""
    target = Path(target)
    for tmp in target.parent.glob(f".{target.name}.*{TMP_SUFFIX}"):
        parts = tmp.name[len(target.name) + 2:].split(".")  # [pid, random, "tmp"]; [random, "tmp"] before pids
        abandoned = len(parts) == 2 or (len(parts) == 3 and parts[0].isdigit() and not _process_alive(int(parts[0])))
        if tmp.is_dir() and abandoned:
            shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder`, each subfolder and `folder` itself (so their entries are on disk)."""
    for path in folder.iterdir():
        if path.is_dir():
            fsync_tree(path)
        else:
            fsync_path(path)
    fsync_path(folder)


def fsync_path(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to disk, so a rename after it is durable."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
