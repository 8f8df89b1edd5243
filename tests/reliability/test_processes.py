"""Faults that need real processes: `recsys train` killed with SIGKILL in the middle of an epoch and resumed,
and two `recsys train` processes started at once in the same folder."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.data.prepare import prepare_dataset
from recsys.saved_model import load_model_files
from recsys.training.train import train
from tests.reliability.conftest import SASREC, cli_command, cli_env, quick, quick_overrides

# Batches of 4 give ~150 optimiser steps per epoch: an epoch lasts a few seconds even on a fast machine, so a
# kill half an epoch after a checkpoint lands in the middle of the next epoch.
LONG_EPOCHS = ["trainer.batch_size=4", "trainer.max_epochs=3", "trainer.patience=0"]


def quality(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_s")}  # timings differ run to run


def wait_for(root: Path, pattern: str, process: subprocess.Popen, timeout: float = 180) -> Path:
    """The first file matching `pattern` under `root`, polled while `process` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        if process.poll() is not None:
            pytest.fail(f"the training process ended (rc {process.returncode}) before {root / pattern} appeared")
        time.sleep(0.02)
    pytest.fail(f"{root / pattern} did not appear within {timeout} s")


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(quick(tmp_path / "straight", *LONG_EPOCHS))
    straight_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'straight' / 'mlflow.db'}")
    straight_losses = [m.value for m in straight_client.get_metric_history(straight.run_id, "train_loss")]

    work = tmp_path / "killed"
    work.mkdir()
    log = (work / "train.log").open("w")
    process = subprocess.Popen(cli_command("train", "--config", str(SASREC), *quick_overrides(work, *LONG_EPOCHS)),
                               cwd=work, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        # Checkpoints are written at the end of an epoch: epoch 0's last.ckpt marks the start of epoch 1.
        # Half an epoch later (the uninterrupted run's own epoch time) epoch 1 is in the middle of its steps.
        last = wait_for(work, "runs/*/checkpoints/last.ckpt", process)
        time.sleep(straight.metrics["epoch_s"] / 2)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    run_dir = last.parents[1]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # killed inside epoch 1
    assert not (run_dir / "model").exists()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1]

    resumed = subprocess.run(cli_command("train", "--resume", str(run_dir)), cwd=work, env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming {run_dir}" in resumed.stdout

    # The same MLflow run goes on, with every epoch logged exactly once and no gap.
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in losses] == [1, 2, 3]  # MLflow steps count epochs from 1
    assert [m.step for m in client.get_metric_history(run_id, "val_ndcg_at_10")] == [1, 2, 3]
    # Every epoch's randomness depends only on (seed, epoch): on CPU the resumed run equals the uninterrupted
    # one exactly (tolerance 0), per-epoch losses and every final metric alike.
    assert [m.value for m in losses] == straight_losses
    saved = load_model_files(run_dir / "model")
    assert quality(saved.metrics) == quality(straight.metrics)
    assert len(quality(saved.metrics)) > 40
    assert run.data.metrics["test_ndcg_at_10"] == straight.metrics["test_ndcg@10"]


def test_two_runs_started_at_once_in_one_folder_keep_their_own_outputs(tmp_path: Path) -> None:
    cfg = quick(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    prepare_dataset(cfg.data)  # the shared cache, ready: the two runs race on their outputs, not on data
    args = cli_command("train", "--config", str(SASREC),
                       *quick_overrides(tmp_path, "trainer.max_epochs=1", "trainer.limit_train_batches=2"))
    logs = [(tmp_path / f"run{n}.log").open("w") for n in (1, 2)]
    processes = [subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
                 for log in logs]
    codes = [p.wait(timeout=300) for p in processes]
    for log in logs:
        log.close()
    outputs = [(tmp_path / f"run{n}.log").read_text() for n in (1, 2)]
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    # Both start on a fresh SQLite store: creating its schema at once used to leave one run untracked.
    assert not any("MLflow tracking at" in o for o in outputs), "\n".join(outputs)

    run_dirs = sorted(p.parent for p in (tmp_path / "runs").glob("*/run.json"))
    assert len(run_dirs) == 2  # same second, same name stem: the second got its own folder
    printed = {line.split(":", 1)[1].strip() for o in outputs for line in o.splitlines()
               if line.startswith("run folder:")}
    assert printed == {str(d) for d in run_dirs}
    run_ids = [json.loads((d / "run.json").read_text())["run_id"] for d in run_dirs]
    assert len(set(run_ids)) == 2 and None not in run_ids
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run_dir, run_id in zip(run_dirs, run_ids):
        saved = load_model_files(run_dir / "model")  # whole and checksummed
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["run_dir"] == str(run_dir.resolve())  # each run logged its own folder
        assert run.data.metrics["test_ndcg_at_10"] == pytest.approx(saved.metrics["test_ndcg@10"])
        assert not list(run_dir.glob(".*.tmp")) and not list((run_dir / "checkpoints").glob(".*.tmp"))
