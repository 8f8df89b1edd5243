"""recsys.durable: a file or folder is either the old one or the complete new one, and no temporary file or
folder is left behind, also when the write fails part-way (provoked for real: a serializer that raises mid-file,
a rename onto a folder, a rename across filesystems)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest

from recsys.durable import (
    folder_beside,
    publish_folder,
    remove_abandoned_folders,
    replacing,
    write_bytes,
    write_json,
    write_text,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- files --------------------------------------------------------------------------------------------------


def test_writes_replace_whole_files_and_leave_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "run.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    write_json(target, {"b": 2, "a": [3]}, sort_keys=True)
    assert target.read_text(encoding="utf-8") == '{\n  "a": [\n    3\n  ],\n  "b": 2\n}\n'
    write_text(tmp_path / "out" / "config.yaml", "model: sasrec  # é\n")
    write_bytes(tmp_path / "out" / "blob", b"\x00\x01")
    assert (tmp_path / "out" / "config.yaml").read_text(encoding="utf-8") == "model: sasrec  # é\n"
    assert (tmp_path / "out" / "blob").read_bytes() == b"\x00\x01"
    assert names(tmp_path / "out") == ["blob", "config.yaml", "run.json"]


def test_a_serializer_that_fails_mid_file_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    write_json(target, {"run_id": "abc"})
    before = target.read_bytes()
    # 10,000 numbers are streamed into the temporary file before the object that JSON cannot encode
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(target, {"a": list(range(10_000)), "z": object()})
    assert target.read_bytes() == before
    assert names(tmp_path) == ["run.json"]


def test_a_writer_that_raises_after_writing_half_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    write_bytes(target, b"old")
    seen: list[tuple[Path, bytes]] = []
    with pytest.raises(OSError, match="disk full"), replacing(target) as tmp:
        tmp.write_bytes(b"half of the new")
        seen.append((tmp, tmp.read_bytes()))
        raise OSError("disk full")
    ((tmp, written),) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(f".weights.bin.{os.getpid()}.")  # beside the target
    assert written == b"half of the new"  # the failure really came part-way through a write
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["weights.bin"]


def test_a_parquet_writer_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "frame.parquet"
    with replacing(target) as tmp:
        pl.DataFrame({"a": [1]}).write_parquet(tmp)
    with pytest.raises(pl.exceptions.PolarsError), replacing(target) as tmp:  # Python objects have no Parquet type
        pl.DataFrame({"a": [object()]}, schema={"a": pl.Object}).write_parquet(tmp)
    assert pl.read_parquet(target)["a"].to_list() == [1]
    assert names(tmp_path) == ["frame.parquet"]


def test_a_missing_folder_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_json(tmp_path / "gone" / "index.json", {})
    assert names(tmp_path) == []


def test_a_rename_that_fails_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    target.mkdir()  # os.replace cannot put a file over a folder
    (target / "inside").write_text("kept")
    with pytest.raises(IsADirectoryError):
        write_text(target, "{}")
    assert names(tmp_path) == ["index.json"] and (target / "inside").read_text() == "kept"


# -- folders ------------------------------------------------------------------------------------------------


def build(tmp: Path, text: str) -> None:
    (tmp / "manifest.json").write_text(json.dumps({"text": text}))
    (tmp / "backbone").mkdir()
    (tmp / "backbone" / "vocab.txt").write_text(text)


def test_a_published_folder_appears_whole_and_its_temporary_folder_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "models" / "model"
    with folder_beside(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(f".model.{os.getpid()}.")
        assert tmp.name.endswith(".tmp")
        build(tmp, "new")
        assert not target.exists()  # nothing at the target until it is published
        publish_folder(tmp, target)
    assert (target / "backbone" / "vocab.txt").read_text() == "new"
    assert names(tmp_path / "models") == ["model"]


def test_an_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "mine.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="model: already exists; not overwritten"), \
            folder_beside(target) as tmp:
        build(tmp, "new")
        publish_folder(tmp, target)
    assert names(target) == ["mine.txt"] and (target / "mine.txt").read_text() == "the user's"
    assert names(tmp_path) == ["model"]


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad item table"), folder_beside(tmp_path / "model") as tmp:
        build(tmp, "half")
        raise ValueError("bad item table")
    assert names(tmp_path) == []


def test_replace_swaps_a_cache_folder_and_removes_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "prepared"
    for text in ("first", "second"):
        with folder_beside(target) as tmp:
            build(tmp, text)
            publish_folder(tmp, target, replace=True)
    assert (target / "backbone" / "vocab.txt").read_text() == "second"
    assert names(tmp_path) == ["prepared"]  # the first one, moved aside, is deleted


def test_replace_puts_the_old_folder_back_when_the_new_one_cannot_be_renamed_in(tmp_path: Path) -> None:
    other_filesystem = Path("/dev/shm")
    if not other_filesystem.is_dir() or other_filesystem.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's temporary folder")
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "meta.json").write_text("old")
    with tempfile.TemporaryDirectory(dir=other_filesystem) as elsewhere:
        built = Path(elsewhere) / "built"
        built.mkdir()
        build(built, "new")
        with pytest.raises(OSError) as failure:  # a rename cannot cross filesystems
            publish_folder(built, target, replace=True)
    assert failure.value.errno == errno.EXDEV
    assert names(target) == ["meta.json"] and (target / "meta.json").read_text() == "old"
    assert names(tmp_path) == ["prepared"]


def test_folders_of_writers_that_are_gone_are_removed_and_others_kept(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that has exited (its pid is not reused this quickly)
    dead = tmp_path / f".model.{dead_pid}.abc123.tmp"
    live = tmp_path / f".model.{os.getpid()}.def456.tmp"
    no_pid = tmp_path / ".model.notapid.ghi789.tmp"
    another_target = tmp_path / f".model-2.{dead_pid}.jkl012.tmp"
    for folder in (dead, live, no_pid, another_target):
        folder.mkdir()
    remove_abandoned_folders(tmp_path / "model")
    assert names(tmp_path) == sorted([live.name, no_pid.name, another_target.name])
