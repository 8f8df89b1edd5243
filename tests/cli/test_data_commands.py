"""`recsys data prepare|stats`: what they print, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.cli import main
from tests.data.conftest import write_tiny_ml1m


@pytest.fixture
def tiny_ml1m(tmp_path: Path) -> Path:
    return write_tiny_ml1m(tmp_path / "ml-1m")


def test_prepare_prints_stats_and_cache(tiny_ml1m: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    rc = main(["data", "prepare", "ml-1m", "--from", str(tiny_ml1m), "--min-user", "1", "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "users: 3" in out and "interactions: 9" in out and f"cache: {cache}" in out
    rc = main(["data", "stats", "ml-1m", "--from", str(tiny_ml1m), "--min-user", "1", "--min-item", "3",
               "--cache-dir", str(cache), "--json"])  # fmt: skip
    stats = json.loads(capsys.readouterr().out)
    assert rc == 0 and stats["items"] == 2 and "cache" not in stats


def test_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "ml-2m", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'ml-2m' is unknown") and err.count("\n") == 1
