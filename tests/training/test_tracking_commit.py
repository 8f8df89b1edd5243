"""The git commit logged with every run is the recsys checkout's, wherever the run was started."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import recsys
from recsys.training.tracking import git_commit

PACKAGE = Path(recsys.__file__).resolve().parent


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder,
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def _repository(folder: Path) -> str:
    """A new repository with one commit, and that commit."""
    folder.mkdir(parents=True, exist_ok=True)
    _git(folder, "init", "-q")
    (folder / "notes.txt").write_text("another project\n")
    (folder / ".gitignore").write_text("venv/\n")
    _git(folder, "add", "notes.txt", ".gitignore")
    _git(folder, "commit", "-q", "-m", "other")
    return _git(folder, "rev-parse", "HEAD")


def test_started_inside_another_repository_the_commit_is_still_the_checkouts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = _repository(tmp_path / "other")
    monkeypatch.chdir(tmp_path / "other")
    logged = git_commit()
    assert logged is not None, "the tests run from a git checkout of recsys"
    assert logged.removesuffix("-dirty") == _git(PACKAGE, "rev-parse", "HEAD")
    assert not logged.startswith(other)


def test_a_copy_installed_where_git_ignores_it_logs_no_commit(tmp_path: Path) -> None:
    _repository(tmp_path / "project")
    installed = tmp_path / "project" / "venv" / "site-packages" / "recsys"
    installed.mkdir(parents=True)
    shutil.copy(PACKAGE / "__init__.py", installed / "__init__.py")
    assert git_commit(installed) is None  # the enclosing repository's commit is not this code's
