"""Faults that need real processes: `recsys train` killed with SIGKILL in the middle of an epoch and resumed,
and two `recsys train` processes started at once in the same folder."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.data.prepare import prepare_dataset
from recsys.saved_model import load_model_files
from recsys.training.train import train
from tests.processes import running, wait_for_exit, wait_until
from tests.reliability.conftest import SASREC, cli_command, cli_env, quick, quick_overrides

# 610 users in batches of 32: 20 optimiser steps per epoch, so there is a middle to be killed in.
LONG_EPOCHS = ["trainer.batch_size=32", "trainer.max_epochs=3", "trainer.patience=0"]
PAUSE_AT_BATCH = 9

# `recsys train` (the CLI's own main) with one extra callback: after step PAUSE_AT_BATCH of epoch 1 it creates
# the marker file named by its first argument and holds still. The test kills it there: in the middle of
# epoch 1 at a known step, however slow the machine, where a kill timed by the clock could land anywhere.
# Run as `python -c` so that it needs only the installed recsys, not this repository on sys.path.
PAUSING_TRAIN = f"""
import sys, threading
from pathlib import Path
import lightning as L
import recsys.training.train as train_module
from recsys.cli import main

marker = Path(sys.argv[1])

class PauseMidEpoch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == {PAUSE_AT_BATCH}:
            marker.write_text(str(trainer.global_step))
            threading.Event().wait(600)  # until the test's SIGKILL; bounded, should the test itself be gone
            sys.exit("PauseMidEpoch: paused 600 s and nobody killed the run")

real_train = train_module.train
train_module.train = lambda *args, **kwargs: real_train(*args, **kwargs, callbacks=[PauseMidEpoch()])
sys.exit(main(sys.argv[2:]))
"""


def quality(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_s")}  # timings differ run to run


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = train(quick(tmp_path / "straight", *LONG_EPOCHS))
    straight_client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'straight' / 'mlflow.db'}")
    straight_losses = [m.value for m in straight_client.get_metric_history(straight.run_id, "train_loss")]

    work = tmp_path / "killed"
    work.mkdir()
    paused = work / "paused-mid-epoch"
    args = [sys.executable, "-c", PAUSING_TRAIN, str(paused),
            "train", "--config", str(SASREC), *quick_overrides(work, *LONG_EPOCHS)]
    log = work / "train.log"
    with running(args, log, cwd=work, env=cli_env()) as process:
        wait_until(paused.exists, process, log, f"the run to pause in epoch 1 after batch {PAUSE_AT_BATCH}")
        os.kill(process.pid, signal.SIGKILL)  # the training process itself, as the OOM killer or kill -9 would
        assert wait_for_exit(process, log, "the killed run") == -signal.SIGKILL
    (run_dir,) = {p.parent for p in (work / "runs").glob("*/run.json")}
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0  # killed inside epoch 1: after epoch 0's steps and 10 of epoch 1's
    assert int(paused.read_text()) == checkpoint["global_step"] + PAUSE_AT_BATCH + 1
    assert not (run_dir / "model").exists()
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1]

    resume_log = work / "resume.log"
    with running(cli_command("train", "--resume", str(run_dir)), resume_log, cwd=work, env=cli_env()) as process:
        returncode = wait_for_exit(process, resume_log, "recsys train --resume")
    assert returncode == 0, resume_log.read_text()[-4000:]
    assert f"resuming {run_dir}" in resume_log.read_text()

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
    logs = [tmp_path / f"run{n}.log" for n in (1, 2)]
    with running(args, logs[0], cwd=tmp_path, env=cli_env()) as first, \
            running(args, logs[1], cwd=tmp_path, env=cli_env()) as second:
        codes = [wait_for_exit(p, log, f"recsys train ({log.name})") for p, log in zip((first, second), logs)]
    outputs = [log.read_text() for log in logs]
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
