"""What the command line prints: readable numbers and titles, quiet when its reader goes away, and `--resume`
that understands what follows it and refuses a run with nothing left to train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cli import TITLE_WIDTH, _shortened, main
from tests.training.test_train import QUICK

CONFIG = Path(__file__).parents[2] / "configs" / "sasrec_ml-latest-small.yaml"


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte (as `| head` once it has read)
    try:
        # (argparse's own help output swallows the error itself: a command's printed results are the case)
        done = subprocess.run([sys.executable, "-m", "recsys.cli", "data", "stats", "ml-latest-small", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""


def test_density_is_printed_to_three_significant_digits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "ml-latest-small"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 100,836 interactions over 610 users x 9,724 items = 0.016999...
    assert "density: 0.0170" in [line.strip() for line in lines]


def test_a_title_is_cut_with_a_mark_and_only_when_too_long() -> None:
    fits = "x" * TITLE_WIDTH
    assert _shortened(fits, TITLE_WIDTH) == fits
    cut = _shortened(fits + "yz", TITLE_WIDTH)
    assert len(cut) == TITLE_WIDTH and cut.endswith("…") and cut[:-1] == fits[:-1]


def _train(tmp_path: Path, *args: str) -> int:
    return main(["train", "--config", str(CONFIG), *args, *QUICK, "trainer.limit_train_batches=2",
                 "trainer.patience=0", "tracking.enabled=false", f"tracking.output_dir={tmp_path / 'runs'}"])


def test_resume_takes_what_follows_for_overrides_and_refuses_a_finished_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, "trainer.max_epochs=1") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()

    # The override after --resume is not a run folder: the newest run goes on to its second epoch.
    assert _train(tmp_path, "--resume", "trainer.max_epochs=2") == 0
    assert json.loads((run_dir / "model-2" / "metrics.json").read_text())["epochs_run"] == 2
    capsys.readouterr()

    # Resumed again as it is, it has nothing left to train: one line, exit 2, no model-3.
    before = sorted(p.name for p in run_dir.iterdir())
    assert _train(tmp_path, "--resume", str(run_dir), "trainer.max_epochs=2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run is finished (2 of trainer.max_epochs=2 epochs run)" in err[0], err
    assert sorted(p.name for p in run_dir.iterdir()) == before
