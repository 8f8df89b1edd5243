"""Cool-down (trainer.cooldown_epochs): a second fit that starts from the best epoch's weights and optimiser
state, with the epoch count, history and timer of the last epoch, and anneals the learning rate to zero.

The second fit starts from a checkpoint built here from two of the run's own (`cooldown_start.ckpt`), and
`run.json` records the epoch it began at, so a run killed in its cool-down resumes in it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from recsys.run_config import RunConfig
from recsys.training.run_folder import read_run_info, write_run_info

COOLDOWN_CKPT = "cooldown_start.ckpt"


def cooldown_state(cfg: RunConfig, run_dir: Path, ckpt_path: Path | None) -> tuple[int, Path] | None:
    """(first cool-down epoch, checkpoint to fit from) when this fit is the cool-down: a resumed run that
    had begun it, or one whose main training had already ended (early stopped, or at max_epochs) and now
    asks for a cool-down. None: main training first."""
    if not cfg.trainer.cooldown_epochs or ckpt_path is None:
        return None
    from recsys.training.checkpoints import load_checkpoint_file

    state = load_checkpoint_file(ckpt_path)
    next_epoch = int(state["epoch"]) + 1
    started = read_run_info(run_dir).get("cooldown_first_epoch")
    if started is not None:  # killed before the cool-down's first epoch was saved: start it again
        return int(started), ckpt_path if next_epoch > int(started) else run_dir / "checkpoints" / COOLDOWN_CKPT
    if main_training_ended(cfg, state):
        return start_cooldown(run_dir, next_epoch)
    return None


def start_cooldown(run_dir: Path, first_epoch: int) -> tuple[int, Path] | None:
    """Write the cool-down's starting checkpoint: the best epoch's weights and optimiser moments, and the last
    epoch's loops, history, best-so-far and timer, so epochs go on counting and the whole run stays one
    history. No scheduler state (the cool-down's starts at its first step) and no early stopping (the
    cool-down runs to its end). None when no epoch was validated, so there is no best one to go back to."""
    from recsys.training.checkpoints import AtomicCheckpointIO, load_checkpoint_file

    folder = run_dir / "checkpoints"
    if not (folder / "best.ckpt").is_file():
        warnings.warn("no validated epoch to cool down from (trainer.val_every > epochs run?): no cool-down",
                      RuntimeWarning, stacklevel=2)
        return None
    from recsys.training.launch import is_first_process

    # Only the first process of a multi-process run writes; the others read the file in their fit, which
    # loads it only once the process group has joined them all (so after this write).
    if is_first_process():
        best, last = load_checkpoint_file(folder / "best.ckpt"), load_checkpoint_file(folder / "last.ckpt")
        start = {**last, "state_dict": best["state_dict"], "optimizer_states": best["optimizer_states"],
                 "lr_schedulers": [],
                 "callbacks": {k: v for k, v in last["callbacks"].items() if not k.startswith("EarlyStopping")}}
        AtomicCheckpointIO().save_checkpoint(start, folder / COOLDOWN_CKPT)
        write_run_info(run_dir, {"cooldown_first_epoch": first_epoch, "cooldown_from_epoch": int(best["epoch"])})
    return first_epoch, folder / COOLDOWN_CKPT


def main_training_ended(cfg: RunConfig, state: dict[str, Any]) -> bool:
    """Whether the main training of the run whose last checkpoint is `state` is over under `cfg`: it reached
    trainer.max_epochs, or early stopping's wait reached trainer.patience."""
    if int(state["epoch"]) + 1 >= cfg.trainer.max_epochs:
        return True
    stopping = [v for k, v in state.get("callbacks", {}).items() if k.startswith("EarlyStopping")]
    return bool(cfg.trainer.patience and stopping and stopping[0].get("wait_count", 0) >= cfg.trainer.patience)
