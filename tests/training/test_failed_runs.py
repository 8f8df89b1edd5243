"""A run that fails after it started: marked FAILED in MLflow with the reason, nothing half-made left behind
(its folder goes when nothing in it can be resumed), and resumable when an epoch was checkpointed."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from mlflow.tracking import MlflowClient

from recsys.training.resume import resume_config
from recsys.training.train import train

from .test_train import quick_config


class FailAt(L.Callback):
    """Raises in the given epoch (Lightning's count, from 0) after a few batches: a failure mid-run."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.current_epoch == self.epoch and trainer.fit_loop.epoch_loop.batch_progress.current.completed >= 3:
            raise RuntimeError("the disk caught fire\nsecond line")


def only_run(tmp_path: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    return runs[0]


def test_a_failure_in_the_first_epoch_marks_the_run_failed_and_removes_its_folder(tmp_path: Path) -> None:
    cfg = quick_config(tmp_path, "trainer.max_epochs=2")
    with pytest.raises(RuntimeError, match="the disk caught fire"):
        train(cfg, callbacks=[FailAt(epoch=0)])
    run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["recsys.failure"] == "RuntimeError: the disk caught fire"
    assert list((tmp_path / "runs").iterdir()) == []  # no checkpoint yet: nothing to resume, nothing kept


def test_a_failure_after_a_checkpoint_keeps_the_run_resumable(tmp_path: Path) -> None:
    cfg = quick_config(tmp_path, "trainer.max_epochs=2")
    with pytest.raises(RuntimeError):
        train(cfg, callbacks=[FailAt(epoch=1)])
    assert only_run(tmp_path).info.status == "FAILED"
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["failed"] == "RuntimeError: the disk caught fire"
    assert not (run_dir / "model").exists()

    resumed = train(resume_config(run_dir, []), resume=run_dir)
    run = only_run(tmp_path)
    assert run.info.run_id == resumed.run_id and run.info.status == "FINISHED"
    assert resumed.model_dir is not None and (resumed.model_dir / "manifest.json").is_file()
    assert "failed" not in json.loads((run_dir / "run.json").read_text())
