"""benchmarks/train_quality.py end to end on the embedded ml-latest-small (cut short): a run that ended and
was continued with --resume reports the whole run, as if it had never stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
QUICK = ["data.max_history=30", "model.max_len=30", "model.hidden=32", "trainer.threads=2",
         "tracking.enabled=false"]


def train_quality(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_quality.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def result(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_resumed_run_reports_the_whole_run(tmp_path: Path) -> None:
    # lr 0: every epoch scores the same, so the best epoch is the first process's epoch 0, and the resumed
    # run can only report its time if the first part's epoch times came along.
    config = str(ROOT / "configs" / "sasrec_ml-latest-small.yaml")
    first = train_quality("--name", "first", "--results-dir", str(tmp_path), "--config", config, "--seeds", "7",
                          "--", *QUICK, "trainer.lr=0", "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    output_dir = Path(result(tmp_path, "first")["config"]["tracking"]["output_dir"])
    run_dirs = list(output_dir.glob("sasrec-*"))
    assert len(run_dirs) == 1

    resumed = train_quality("--name", "resumed", "--results-dir", str(tmp_path), "--resume", str(run_dirs[0]),
                            "--", "trainer.max_epochs=3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    part, whole = result(tmp_path, "first")["runs"][0], result(tmp_path, "resumed")["runs"][0]
    assert whole["seed"] == 7 and whole["resumed_from"] == str(run_dirs[0])
    assert (part["epochs_run"], whole["epochs_run"]) == (1, 3)
    assert part["best_epoch"] == whole["best_epoch"] == 1  # the first epoch (counted from 1)
    assert whole["ndcg@10"] == pytest.approx(part["ndcg@10"], abs=1e-9)
    assert whole["fit_s_to_best_epoch"] == part["fit_s_to_best_epoch"] > 0
    assert "seed 7 epoch 3 " in resumed.stdout and "seed 7 epoch 1 " not in resumed.stdout  # from 1


def test_resume_of_a_folder_that_is_not_a_run_says_so(tmp_path: Path) -> None:
    done = train_quality("--name", "x", "--results-dir", str(tmp_path), "--resume", str(tmp_path))
    assert done.returncode != 0
    assert f"{tmp_path}: not a recsys run folder (no config.yaml)" in done.stderr
    assert "Traceback" not in done.stderr
