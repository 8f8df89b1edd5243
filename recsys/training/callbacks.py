"""Lightning callbacks: per-epoch metric history (kept in checkpoints) and its MLflow logging; early
stopping that keeps the configured patience when a run resumes."""

from __future__ import annotations

import time
from typing import Any, Callable

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

from recsys.training.tracking import Tracker


class EpochHistory(L.Callback):
    """Records every epoch's train loss, learning rate and validation metrics, and sends them to MLflow.

    The history lives in the callback's state, which Lightning stores in every checkpoint, so a resumed run
    plots its whole curve. `logged_through` guards MLflow against duplicates: after a crash between
    logging epoch N and checkpointing it, the resumed run trains epoch N again but does not log it twice.

    Rows and `logged_through` count epochs from 0, as Lightning does; what a user reads counts from 1: the
    MLflow step of epoch row N is N + 1 (so the final metrics, logged at step epochs_run, sit on the last
    epoch's step), and `say`, when given (no progress bar), gets one line per epoch.
    """

    def __init__(self, tracker_factory: Callable[[], Tracker | None],
                 say: Callable[[str], None] | None = None) -> None:
        self.tracker_factory = tracker_factory
        self.say = say
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
                self.logged_through = max([self.logged_through, *(step - 1 for step in steps)])

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
            self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            self.logged_through = epoch
        if self.say is not None:
            self.say(epoch_line(row, trainer.max_epochs))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "logged_through": self.logged_through}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        # max(): setup may already have read a later epoch from MLflow
        self.logged_through = max(self.logged_through, int(state_dict.get("logged_through", -1)))


def epoch_line(row: dict[str, float], max_epochs: int) -> str:
    """`epoch 3/10  loss 6.123  val ndcg@10 0.0456  4.1 s` (training and validation time) for a history row;
    an epoch that did not validate (trainer.val_every > 1) shows no validation metric."""
    parts = [f"epoch {int(row['epoch']) + 1}/{max_epochs}"]
    if "train_loss" in row:
        parts.append(f"loss {row['train_loss']:.3f}")
    if "val_ndcg@10" in row:
        parts.append(f"val ndcg@10 {row['val_ndcg@10']:.4f}")
    parts.append(f"{row.get('epoch_train_s', 0.0) + row.get('epoch_val_s', 0.0):.1f} s")
    return "  ".join(parts)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar, with the epoch counted from 1 and out of max_epochs (`Epoch 10/10` for the
    last of 10; Lightning's own says `Epoch 9`), as the per-epoch lines, metrics.json and the plots count."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning's own body with the description changed (calling it first would draw `Epoch 0` once).
        from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


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
