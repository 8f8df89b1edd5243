"""`recsys train --resume`: which run folder goes on, with which config, and whether it has anything left to do."""

from __future__ import annotations

from pathlib import Path

from recsys.errors import ConfigError
from recsys.run_config import RunConfig, load_run_config
from recsys.training.cooldown import main_training_ended
from recsys.training.run_folder import RUN_INFO, read_run_info


def latest_run_dir(cfg: RunConfig) -> Path:
    """The most recently started run folder under tracking.output_dir."""
    root = Path(cfg.tracking.output_dir)
    runs = [p for p in root.glob("*/") if (p / RUN_INFO).is_file()] if root.is_dir() else []
    if not runs:
        raise ConfigError(f"{root}: no run to resume")
    return max(runs, key=lambda p: read_run_info(p).get("started", 0.0))


def resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config a run folder was started with, plus overrides (e.g. a larger trainer.max_epochs), read as
    any config file is (errors name the file, line and key)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a recsys run folder (no config.yaml)")
    return load_run_config(path, overrides)


def refuse_finished_run(cfg: RunConfig, run_dir: Path) -> None:
    """A resumed run that would train no epoch (and so only save its model again, as model-2) stops here,
    before anything is written, with a line that says why and what would go on."""
    reason = _why_finished(cfg, run_dir)
    if reason:
        raise ConfigError(f"{run_dir}: the run is finished ({reason}); nothing trained or written. To go on, "
                          "resume it with a larger trainer.max_epochs, trainer.patience or trainer.max_minutes, "
                          "or with trainer.cooldown_epochs=N")


def _why_finished(cfg: RunConfig, run_dir: Path) -> str | None:
    """Why this run, resumed with `cfg`, has no epoch left to train; None when it has one, or when it never
    saved its model (a run killed after its last epoch: resuming it evaluates and saves)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not (run_dir / "model").is_dir() or not last.is_file():
        return None
    from recsys.training.checkpoints import load_checkpoint_file

    state = load_checkpoint_file(last)
    epochs_run = int(state["epoch"]) + 1
    elapsed = state.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {}).get("train", 0.0)
    if cfg.trainer.max_minutes and elapsed >= cfg.trainer.max_minutes * 60:
        return f"its time budget trainer.max_minutes={cfg.trainer.max_minutes:g} is spent"
    started = read_run_info(run_dir).get("cooldown_first_epoch")
    if started is not None:
        if epochs_run < int(started) + cfg.trainer.cooldown_epochs:
            return None
        return f"{epochs_run} epochs, its cool-down of trainer.cooldown_epochs={cfg.trainer.cooldown_epochs} included"
    if cfg.trainer.cooldown_epochs or not main_training_ended(cfg, state):
        return None  # a cool-down asked for now, or epochs left before max_epochs
    if epochs_run >= cfg.trainer.max_epochs:
        return f"{epochs_run} of trainer.max_epochs={cfg.trainer.max_epochs} epochs run"
    return f"early stopped after {epochs_run} epochs, trainer.patience={cfg.trainer.patience}"
