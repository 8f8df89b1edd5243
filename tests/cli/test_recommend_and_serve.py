"""`recsys recommend` as a user runs it (a subprocess on a small saved model), and `recsys serve`'s help and
its check of --port before anything loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.saved_model import save_model
from tests.retrieval.conftest import tiny_saved_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tiny_saved_model(), tmp_path_factory.mktemp("cli") / "model")


def recsys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, timeout=60)


def test_recommend_prints_a_table_and_json(model_dir: Path) -> None:
    from recsys.retrieval import Recommender

    want = Recommender.load(model_dir).recommend(user=12, k=3)
    table = recsys("recommend", "--model", str(model_dir), "--user", "12", "-k", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "item_id", "score", "title"]
    assert [line.split()[:2] for line in lines[1:]] == [[str(rank), str(r.item_id)] for rank, r in
                                                         enumerate(want, start=1)]
    out = recsys("recommend", "--model", str(model_dir), "--items", "390,380,7", "-k", "2", "--format", "json",
                 "--include-seen")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert [row["rank"] for row in body["items"]] == [1, 2] and body["skipped_items"] == ["7"]
    assert "warning: skipped 1 unknown item ids: 7" in out.stderr
    assert set(body["items"][0]) == {"rank", "item_id", "title", "score"}
    assert [row["item_id"] for row in body["items"]] == [
        r.item_id for r in Recommender.load(model_dir).recommend(history=[390, 380], k=2, exclude_seen=False)]


@pytest.mark.parametrize("args, message", [
    (["--user", "99"], "error: user_id '99' is not a known user"),
    (["--user", "15", "-k", "5"], "error: k=5 but only 2 items"),
    (["--user", "11", "-k", "0"], "error: k must be at least 1, got 0"),
    (["--items", "7,8"], "error: history is empty after skipping 2 unknown item ids"),
    (["--items", "390,7", "--on-unknown", "error"], "error: the history: unknown item ids ['7']"),
])
def test_errors_print_one_line_and_exit_2(model_dir: Path, args: list[str], message: str) -> None:
    out = recsys("recommend", "--model", str(model_dir), *args)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), out.stderr
    assert "Traceback" not in out.stderr


def test_missing_model_is_one_line_error(tmp_path: Path) -> None:
    out = recsys("recommend", "--model", str(tmp_path / "none"), "--user", "1")
    assert out.returncode == 2 and out.stderr.strip() == f"error: {tmp_path / 'none'}: no such model directory"


def test_help_lists_every_option() -> None:
    out = recsys("recommend", "--help")
    for option in ("--model", "--user", "--items", "-k", "--format", "--include-seen", "--index", "--on-unknown"):
        assert option in out.stdout
    serve = recsys("serve", "--help").stdout
    for option in ("--model", "--host", "--port", "--index", "--precompute-users", "--compile", "--max-batch",
                   "--batch-wait-ms", "--workers", "--threads", "--processes", "--access-log", "--history-store"):
        assert option in serve


@pytest.mark.parametrize("port, message", [
    ("99999", "99999 is not a port number (1-65535)"),  # uvicorn's socket call raised OverflowError
    ("0", "0 is not a port number (1-65535)"),
    ("http", "'http' is not a port number (1-65535)"),
])
def test_serve_refuses_a_port_out_of_range_before_loading_anything(model_dir: Path, port: str,
                                                                    message: str) -> None:
    out = recsys("serve", "--model", str(model_dir), "--port", port)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"recsys serve: error: argument --port: {message}"
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--batch-wait-ms", "-1"], "argument --batch-wait-ms: -1 ms is not between 0 and 1000"),
    (["--batch-wait-ms", "soon"], "argument --batch-wait-ms: 'soon' is not a number of milliseconds"),
    (["--max-batch", "0"], "argument --max-batch: 0 must be at least 1"),
    (["--workers", "two"], "argument --workers: 'two' is not a whole number"),
])
def test_serve_checks_its_batching_options_before_loading_anything(model_dir: Path, args: list[str],
                                                                    message: str) -> None:
    out = recsys("serve", "--model", str(model_dir), *args)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"recsys serve: error: {message}"
