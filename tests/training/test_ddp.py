"""Lightning's own multi-process training from config: 2 CPU processes (DDP over gloo), logged once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

CONFIG = Path(__file__).parents[1] / "configs" / "sasrec_small.yaml"


def test_two_process_ddp_epoch_is_logged_once(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "recsys.cli", "train", "--config", str(CONFIG),
        "data.max_history=30", "model.max_len=30", "model.hidden=32", "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.threads=1",
        "trainer.progress_bar=false", f"tracking.output_dir={tmp_path / 'runs'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("saved model:") == 1  # only global rank 0 reports

    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1  # the worker reused the launcher's run folder
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("recsys-ml-latest-small")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["trainer.devices"] == "2" and run.data.params["trainer.strategy"] == "ddp"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_ndcg_at_10")] == [1]
    assert run.data.metrics["test_n_users"] == 610  # the final test sees every user once
