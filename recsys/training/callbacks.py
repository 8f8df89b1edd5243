"""Lightning callbacks: per-epoch metric history (kept in checkpoints) and its MLflow logging; early
stopping that keeps the configured patience when a run resumes."""

from __future__ import annotations

import time
from typing import Any, Callable

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from recsys.training.tracking import Tracker


class EpochHistory(L.Callback):
    """Records every epoch's train loss, learning rate and validation metrics, and sends them to MLflow.

    The history lives in the callback's state, which Lightning stores in every checkpoint, so a resumed run
    plots its whole curve. `logged_through` guards MLflow against duplicates: after a crash between
    logging epoch N and checkpointing it, the resumed run trains epoch N again but does not log it twice.
    """

    def __init__(self, tracker_factory: Callable[[], Tracker | None]) -> None:
        self.tracker_factory = tracker_factory
        self.tracker: Tracker | None = None
        self.history: list[dict[str, float]] = []
        self.logged_through = -1
        self._validated = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.tracker is None:
            tracker = self.tracker_factory()
            # A disabled tracker is dropped here, so that a run with tracking off never imports MLflow.
            self.tracker = tracker if tracker is not None and tracker.active else None
            if self.tracker is not None:
                # A resumed run may have logged an epoch that its last checkpoint does not know of.
                steps = [m.step for m in self.tracker.metric_history("train_loss")]
                self.logged_through = max([self.logged_through, *steps])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        self._train_s: float | None = None
        self._val_s = 0.0
        self._validated = False

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()
        if self._train_s is None and hasattr(self, "_epoch_started"):
            self._train_s = self._val_started - self._epoch_started  # validation ends the training part

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_s = time.perf_counter() - self._val_started
        self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        # callback_metrics keeps the last validation's values through epochs that do not validate (val_every
        # > 1): only an epoch that validated gets val_ metrics, so plots and MLflow never show stale ones.
        kept = ("train_", "val_") if self._validated else ("train_",)
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(kept)}
        if self._train_s is None:
            self._train_s = time.perf_counter() - self._epoch_started
        row["epoch_train_s"] = self._train_s  # optimisation only, without validation
        row["epoch_val_s"] = self._val_s
        optimizers = trainer.optimizers
        if optimizers:
            row["lr"] = float(optimizers[0].param_groups[0]["lr"])
        row["epoch"] = float(epoch)
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]
        if self.tracker is not None and epoch > self.logged_through:
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            self.logged_through = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "logged_through": self.logged_through}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        # max(): setup may already have read a later epoch from MLflow
        self.logged_through = max(self.logged_through, int(state_dict.get("logged_through", -1)))


class ConfiguredEarlyStopping(EarlyStopping):
    """Lightning's early stopping, but a resumed run keeps the patience of its config: Lightning restores the
    patience saved in the checkpoint, so `--resume RUN trainer.patience=40` would be silently ignored (a run
    that early stopping ended would stop again after one more epoch). The wait count still carries over."""

    @property
    def state_key(self) -> str:
        # Plain EarlyStopping's key, so that checkpoints written by either resume with the other.
        return f"EarlyStopping{repr({'monitor': self.monitor, 'mode': self.mode})}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        configured = self.patience
        super().load_state_dict(state_dict)
        self.patience = configured
