"""An MLflow store that fails in the middle of a run: training goes on, the model is saved, a warning says
what failed. (A store unreachable from the start: tests/training/test_train.py.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from recsys.saved_model import load_model_files
from recsys.training.callbacks import EpochHistory
from recsys.training.train import train
from tests.reliability.conftest import quick


def test_sqlite_store_deleted_mid_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "mlflow.db"
    logged_epoch = EpochHistory.on_train_epoch_end

    def then_lose_the_store(self: EpochHistory, trainer, pl_module) -> None:
        logged_epoch(self, trainer, pl_module)
        if trainer.current_epoch == 0:
            db.unlink()  # the database file is gone (a clean-up job, a lost volume) after epoch 0 was logged

    monkeypatch.setattr(EpochHistory, "on_train_epoch_end", then_lose_the_store)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(quick(tmp_path, "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.patience=0"))
    failures = [str(w.message) for w in caught if "MLflow tracking" in str(w.message)]
    assert len(failures) == 1, failures  # warned once, then tracking stays off
    assert failures[0].startswith(f"MLflow tracking at sqlite:///{db} failed to log metrics (OperationalError: "
                                  "attempt to write a readonly database); training goes on without tracking")
    assert result.metrics["epochs_run"] == 2.0  # every epoch trained
    saved = load_model_files(result.model_dir)
    assert saved.metrics["test_ndcg@10"] == result.metrics["test_ndcg@10"]
    assert (result.run_dir / "plots" / "learning_curves.png").is_file()
