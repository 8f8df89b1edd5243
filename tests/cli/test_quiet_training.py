"""A tiny `recsys train`, tracked and with the pyfunc flavour logged, prints no warning its user cannot act on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.training.test_train import QUICK

CONFIG = Path(__file__).parents[2] / "configs" / "sasrec_ml-latest-small.yaml"


def test_a_tracked_run_prints_no_mlflow_type_hint_warning_and_no_download_bars(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    # A fresh process: MLflow's type-hint check runs once per process, when the pyfunc class is defined.
    done = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "train", "--config", str(CONFIG), *QUICK, "trainer.max_epochs=1",
         "trainer.limit_train_batches=2", f"tracking.output_dir={tmp_path / 'runs'}",
         f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "--register", "quiet"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "registered:   models:/quiet/1" in done.stdout  # the pyfunc flavour and the registry were reached
    assert "type hints" not in output
    assert "Downloading artifacts" not in output
    assert "Validating input example" not in output  # MLflow's INFO line as the pyfunc is logged
