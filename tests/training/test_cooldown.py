"""trainer.cooldown_epochs: after the main training, back to the best epoch and anneal the learning rate to zero."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from recsys.errors import ConfigError
from recsys.training.checkpoints import load_checkpoint_file
from recsys.training.resume import resume_config
from recsys.training.train import train
from tests.training.test_train import quick_config

# Two optimiser steps an epoch; max_epochs 3 with patience 0 ends the main training at epoch 2 every time.
QUICK = ["trainer.limit_train_batches=2", "trainer.max_epochs=3", "trainer.patience=0", "trainer.lr=0.01",
         "tracking.enabled=false"]


class _Scramble(L.Callback):
    """Overwrites every weight with noise as epoch 2 starts, so the main training's last epoch is far from its
    best one, and a cool-down that started from the last weights rather than the best would show it."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 2:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.normal_()


def _epochs(result) -> list[int]:
    return [int(row["epoch"]) for row in result.history]


@pytest.fixture(scope="module")
def main_only(tmp_path_factory: pytest.TempPathFactory):
    return train(quick_config(tmp_path_factory.mktemp("main"), *QUICK), callbacks=[_Scramble()])


@pytest.fixture(scope="module")
def cooled(tmp_path_factory: pytest.TempPathFactory):
    return train(quick_config(tmp_path_factory.mktemp("cooled"), *QUICK, "trainer.cooldown_epochs=3"),
                 callbacks=[_Scramble()])


def test_cooldown_epochs_follow_the_main_training_with_the_rate_falling_to_zero(cooled) -> None:
    assert _epochs(cooled) == [0, 1, 2, 3, 4, 5]
    # lr as it stands after each epoch's last step: 6 cool-down steps, 2 an epoch, linearly to zero.
    lrs = [row["lr"] for row in cooled.history]
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.01 * 4 / 6, 0.01 * 2 / 6, 0.0])
    assert all("val_ndcg@10" in row for row in cooled.history)  # every cool-down epoch is validated
    assert cooled.metrics["epochs_run"] == 6


def test_cooldown_starts_from_the_best_epochs_weights_and_keeps_the_best_of_the_whole_run(main_only,
                                                                                           cooled) -> None:
    best_main = max(main_only.history, key=lambda row: row["val_ndcg@10"])
    assert int(best_main["epoch"]) < 2  # the scrambled last epoch is not the best
    info = json.loads((cooled.run_dir / "run.json").read_text())
    assert info["cooldown_from_epoch"] == int(best_main["epoch"])
    assert info["cooldown_first_epoch"] == 3
    start = load_checkpoint_file(cooled.run_dir / "checkpoints" / "cooldown_start.ckpt")
    best = load_checkpoint_file(main_only.run_dir / "checkpoints" / "best.ckpt")
    last = load_checkpoint_file(main_only.run_dir / "checkpoints" / "last.ckpt")
    for name, tensor in best["state_dict"].items():
        assert torch.equal(start["state_dict"][name], tensor), name
    assert not torch.equal(start["state_dict"]["model.item_emb.weight"],
                           last["state_dict"]["model.item_emb.weight"])
    assert start["optimizer_states"][0]["state"][0]["step"] == best["optimizer_states"][0]["state"][0]["step"]
    assert start["epoch"] == 2  # the epoch count, history and timer of the last epoch go on
    # Early stopping never ends a cool-down, and nothing of the main fit's scheduler carries into it.
    assert not any(key.startswith("EarlyStopping") for key in start["callbacks"])
    assert start["lr_schedulers"] == []

    scored = max(cooled.history, key=lambda row: row["val_ndcg@10"])
    assert cooled.metrics["best_epoch"] == scored["epoch"] + 1  # metrics count from 1, rows from 0
    assert cooled.metrics["valid_ndcg@10"] == pytest.approx(scored["val_ndcg@10"], abs=1e-6)
    assert cooled.metrics["valid_ndcg@10"] >= best_main["val_ndcg@10"] - 1e-6
    # The first cool-down epoch carries on from the best weights, not from the scrambled ones.
    scrambled, first_cool = cooled.history[2]["val_ndcg@10"], cooled.history[3]["val_ndcg@10"]
    assert first_cool > 2 * scrambled


def test_a_finished_run_resumed_with_a_cooldown_only_cools_down_as_a_straight_run_would(tmp_path: Path,
                                                                                       cooled) -> None:
    first = train(quick_config(tmp_path, *QUICK), callbacks=[_Scramble()])
    resumed = train(resume_config(first.run_dir, ["trainer.cooldown_epochs=3"]), resume=first.run_dir,
                    callbacks=[_Scramble()])
    assert _epochs(resumed) == [0, 1, 2, 3, 4, 5]  # no main-training epoch in between
    assert resumed.metrics["test_ndcg@10"] == pytest.approx(cooled.metrics["test_ndcg@10"], abs=1e-6)
    assert resumed.metrics["best_epoch"] == cooled.metrics["best_epoch"]


class _Crash(L.Callback):
    """Fails the run as one epoch starts, as a kill would: the epochs before it are checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"killed at epoch {self.epoch}")


@pytest.mark.parametrize("killed_at", [3, 4])  # before the cool-down's first epoch was saved; in its middle
def test_a_run_killed_during_its_cooldown_resumes_to_the_same_result(tmp_path: Path, cooled,
                                                                     killed_at: int) -> None:
    cfg = quick_config(tmp_path, *QUICK, "trainer.cooldown_epochs=3")
    with pytest.raises(RuntimeError, match=f"killed at epoch {killed_at}"):
        train(cfg, callbacks=[_Scramble(), _Crash(killed_at)])
    run_dir = next((tmp_path / "runs").iterdir())
    resumed = train(resume_config(run_dir, []), resume=run_dir, callbacks=[_Scramble()])
    assert _epochs(resumed) == [0, 1, 2, 3, 4, 5]
    assert [row["lr"] for row in resumed.history] == pytest.approx([row["lr"] for row in cooled.history])
    assert resumed.metrics["test_ndcg@10"] == pytest.approx(cooled.metrics["test_ndcg@10"], abs=1e-6)


def test_no_cooldown_once_the_time_budget_is_spent(tmp_path: Path) -> None:
    class SlowSteps(L.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            import time

            time.sleep(0.4)

    cfg = quick_config(tmp_path, *QUICK, "trainer.max_epochs=50", "trainer.max_minutes=0.01",
                       "trainer.cooldown_epochs=3")
    result = train(cfg, callbacks=[SlowSteps()])
    assert result.metrics["epochs_run"] < 3
    assert "cooldown_first_epoch" not in json.loads((result.run_dir / "run.json").read_text())


def test_no_cooldown_without_a_validated_epoch_to_go_back_to(tmp_path: Path) -> None:
    cfg = quick_config(tmp_path, *QUICK, "trainer.max_epochs=2", "trainer.val_every=5", "trainer.cooldown_epochs=2")
    with pytest.warns(RuntimeWarning, match="no validated epoch to cool down from"):
        result = train(cfg)
    assert _epochs(result) == [0, 1]
    assert result.model_dir is not None and (result.model_dir / "manifest.json").is_file()


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.cooldown_epochs=-1", r"trainer.cooldown_epochs: must be at least 0, got -1"),
    # the line names the key (it said "trainer: cooldown_epochs needs lr_decay: none")
    ("trainer.lr_decay=linear", "trainer.cooldown_epochs: needs lr_decay: none"),
])
def test_cooldown_settings_are_checked_when_the_config_loads(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        quick_config(tmp_path, "trainer.cooldown_epochs=2", override)


def test_learning_curves_show_the_rate_falling_and_mark_the_kept_epoch(cooled, main_only) -> None:
    from recsys.training.plots import learning_curves_figure

    figure = learning_curves_figure(cooled.history)
    loss_panel, validation_panel, rate_axis = figure.axes
    rate_line = rate_axis.get_lines()[0]
    assert list(rate_line.get_ydata()) == pytest.approx([row["lr"] for row in cooled.history])
    best = int(cooled.metrics["best_epoch"])  # metrics.json and the plots both count epochs from 1
    marks = [line for line in validation_panel.get_lines() if list(line.get_xdata()) == [best, best]]
    assert len(marks) == 1 and f"best epoch ({best})" == marks[0].get_label()
    # A constant rate (the main training alone) gets no axis of its own.
    assert len(learning_curves_figure(main_only.history).axes) == 2
