"""What `recsys train` tells its user while it runs: a line per step before the first epoch, then one line
per epoch (no progress bar) or a progress bar, epochs counted from 1 in each, as in metrics.json."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsys.training.train import train
from tests.training.test_train import quick_config

QUICK = ["trainer.limit_train_batches=2", "trainer.max_epochs=2", "trainer.patience=0", "tracking.enabled=false"]


def test_without_a_progress_bar_each_step_and_epoch_gets_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    result = train(quick_config(tmp_path, *QUICK))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "preparing data: ml-latest-small (preset raw)"
    assert re.fullmatch(r"building the model: sasrec over [\d,]+ items \(610 users, [\d,]+ interactions\)", err[1])
    epochs = [line for line in err if line.startswith("epoch ")]
    assert len(epochs) == 2
    pattern = r"epoch (\d)/2  loss \d+\.\d{3}  val ndcg@10 (\d\.\d{4})  \d+\.\d s"
    for number, (line, row) in enumerate(zip(epochs, result.history), start=1):
        match = re.fullmatch(pattern, line)
        assert match and int(match[1]) == number, line
        assert float(match[2]) == pytest.approx(row["val_ndcg@10"], abs=5e-5)  # printed to 4 decimals
    best_line = max(epochs, key=lambda line: float(line.split("ndcg@10 ")[1].split()[0]))
    assert best_line.startswith(f"epoch {int(result.metrics['best_epoch'])}/2")  # metrics.json counts alike


def test_the_progress_bar_counts_epochs_from_one_out_of_max_epochs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    train(quick_config(tmp_path, *QUICK, "trainer.progress_bar=true"))
    captured = capsys.readouterr()
    bar = captured.out  # Lightning's bar writes to stdout
    assert "Epoch 1/2" in bar and "Epoch 2/2" in bar
    assert not re.search(r"Epoch 0\b", bar)
    assert not re.search(r"^epoch ", captured.err, re.M)  # the bar instead of the lines
