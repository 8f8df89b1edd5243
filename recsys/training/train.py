"""`recsys train`: one run from config to saved model, tracked in MLflow.

Steps: prepare data (cached) -> split -> model -> Lightning fit with early stopping on validation NDCG@10
-> reload the best epoch -> full-ranking validation and test metrics -> saved model directory -> MLflow.
Each run writes into a fresh folder under `tracking.output_dir`, so runs never clobber each other.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import polars as pl
import torch

from recsys.config import flatten
from recsys.cpus import available_cpus
from recsys.data import schema
from recsys.data.dataset import PreparedDataset, Split
from recsys.errors import ConfigError
from recsys.models import Objective, SequenceModel, build_model
from recsys.saved_model import SavedModel, save_model
from recsys.run_config import RunConfig, load_run_config, run_config_from_dict
from recsys.training.tracking import Tracker, git_commit, resolve_tracking_uri

AfterLogging = Callable[[str, str, Path], object]
RUN_INFO = "run.json"
RUN_DIR_ENV = "RECSYS_RUN_DIR"  # hands the run folder to the worker processes of a multi-process run
MODEL_ARTIFACT = "model"


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path | None  # None on worker processes of a multi-process run
    run_id: str | None
    tracking_uri: str
    metrics: dict[str, float]
    registered_version: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch (see EpochHistory)


def train(cfg: RunConfig, config_file: str | Path | None = None, resume: str | Path | None = None,
          after_logging: AfterLogging | None = None, callbacks: list[Any] | None = None) -> TrainResult:
    """Train per `cfg`; with `resume` (a run folder) continue that run from its last checkpoint.

    `after_logging(tracking_uri, run_id, model_dir)` runs once the model directory is logged and before the
    MLflow run closes: the CLI uses it to add the pyfunc flavour, which lives in a layer above training.
    `callbacks` are extra Lightning callbacks for the fit (benchmarks use one to time the way to a target).
    """
    import lightning as L

    from recsys.data.prepare import leakage_warning, prepare_dataset
    from recsys.data.splits import make_split, not_evaluated

    if resume is not None:
        _refuse_finished_run(cfg, Path(resume))
    _configure_threads(cfg)
    _quiet_libraries()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    say(f"preparing data: {cfg.data.name} (preset {cfg.data.preset})")
    dataset = prepare_dataset(cfg.data, progress=cfg.trainer.progress_bar)
    warning = leakage_warning(dataset)
    if warning:
        print(warning, file=sys.stderr, flush=True)  # printed whatever the progress settings: it may void the run
    split = make_split(dataset, cfg.data)
    note = not_evaluated(dataset, split)
    if note:
        say(note)
    say(f"building the model: {cfg.model_name} over {dataset.n_items:,} items "
        f"({dataset.n_users:,} users, {dataset.n_interactions:,} interactions)")
    model = build_model(cfg.model_name, cfg.model, dataset.n_items)
    _hand_over_item_texts(model, dataset)

    run_dir = Path(resume) if resume is not None else _claim_run_dir(cfg)
    info = _read_run_info(run_dir) if resume is not None else {}
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume is not None and not last_ckpt.is_file():
        raise ConfigError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)")
    if info.pop("failed", None) is not None:  # resumed after a failure: what failed is in its MLflow run's tags
        _write_json_atomic(run_dir / RUN_INFO, info)

    tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    holder: dict[str, Tracker | None] = {"tracker": None}
    tracking_setup_s = [0.0]  # kept out of fit_s: a new store's schema alone takes seconds

    def start_tracker() -> Tracker | None:
        started = time.perf_counter()
        tracker = Tracker(tracking_uri, _experiment(cfg), _run_name(cfg, run_dir),
                          run_id=info.get("run_id"), enabled=cfg.tracking.enabled)
        if tracker.active and resume is None:
            _log_run_start(tracker, cfg, dataset, split, config_file, run_dir, model.objective())
        _write_run_info(run_dir, {"run_id": tracker.run_id, "tracking_uri": tracking_uri})
        holder["tracker"] = tracker
        tracking_setup_s[0] += time.perf_counter() - started
        return tracker

    try:
        if resume is None:
            _write_config(run_dir, cfg)
        fit_started = time.perf_counter()
        trainer, module, datamodule, history = _fit(cfg, model, dataset, split, run_dir, start_tracker,
                                                    last_ckpt if resume is not None else None, callbacks or [])
        if not trainer.is_global_zero:
            return TrainResult(run_dir, None, None, tracking_uri, {})
        return _finish(cfg, trainer, module, datamodule, history, dataset, split, run_dir, holder["tracker"],
                       tracking_uri, fit_started, tracking_setup_s[0], after_logging)
    except BaseException as exc:
        _mark_failed(run_dir, holder["tracker"], exc, keep=resume is not None or last_ckpt.is_file())
        raise


def _finish(cfg: RunConfig, trainer: Any, module: Any, datamodule: Any, history: list[dict[str, float]],
            dataset: PreparedDataset, split: Split, run_dir: Path, tracker: Tracker | None, tracking_uri: str,
            fit_started: float, tracking_setup_s: float, after_logging: AfterLogging | None) -> TrainResult:
    """After the fit: the best weights back, test metrics, the saved model, the MLflow run closed."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        _load_weights(module, Path(best))
    metrics = _final_metrics(module, datamodule, cfg)
    metrics["epochs_run"] = float(trainer.current_epoch)
    metrics["best_epoch"] = float(_best_epoch(history))  # counted from 1, as the console shows epochs
    # this process's fit (after a resume: since it), without starting the MLflow run
    metrics["fit_s"] = time.perf_counter() - fit_started - tracking_setup_s
    metrics.update(_epoch_times(history))
    model_dir = _save(cfg, module.model, dataset, split, metrics, run_dir, tracker)
    version = _finish_tracking(tracker, cfg, metrics, history, run_dir, model_dir, after_logging)
    return TrainResult(run_dir, model_dir, tracker.run_id if tracker else None, tracking_uri, metrics, version,
                       history)


def _mark_failed(run_dir: Path, tracker: Tracker | None, exc: BaseException, keep: bool) -> None:
    """A run that failed after it started: its MLflow run marked FAILED (KILLED when interrupted) with the
    reason as a tag, never left RUNNING; its folder removed when nothing in it can be resumed, else kept
    with the reason in run.json, so `recsys train --resume` can go on from the last epoch."""
    import shutil

    interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
    reason = "interrupted" if interrupted else failure_reason(exc)
    if tracker is not None:
        tracker.set_tags({"recsys.failure": reason})
        tracker.finish("KILLED" if interrupted else "FAILED")
    if int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return  # a worker process: the launcher decides about the folder
    if keep:
        _write_run_info(run_dir, {"failed": reason})
    else:
        shutil.rmtree(run_dir, ignore_errors=True)


def failure_reason(exc: BaseException) -> str:
    """One line: a RecsysError's own message, else the exception's type and the first line of its text."""
    from recsys.errors import RecsysError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RecsysError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# Fitting


def _fit(cfg: RunConfig, model: SequenceModel, dataset: PreparedDataset, split: Split, run_dir: Path,
         start_tracker: Any, ckpt_path: Path | None,
         extra_callbacks: list[Any]) -> tuple[Any, Any, Any, list[dict[str, float]]]:
    from recsys.training.callbacks import ConfiguredEarlyStopping, EpochHistory, EpochProgressBar
    from recsys.training.datamodule import SequenceDataModule
    from recsys.training.module import VAL_MONITOR, RecommenderModule, log_popularity

    objective = model.objective()
    datamodule = SequenceDataModule(
        split, max_len=model.max_len, objective=objective.batches, batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size, windows=cfg.trainer.train_windows,
        bucket_by_length=cfg.trainer.bucket_by_length,
        mask_token=objective.mask_token, mask_prob=objective.mask_prob,
        last_item_mask_prob=objective.last_item_mask_prob,
        num_workers=cfg.trainer.num_workers, seed=cfg.trainer.seed, with_timestamps=model.uses_timestamps,
    )
    module = RecommenderModule(
        model, dataset.n_items, loss=objective.loss, n_negatives=objective.n_negatives, gbce_t=objective.gbce_t,
        trainer_config=cfg.trainer,
        log_popularity=log_popularity(split.train[schema.ITEMS].to_list(), dataset.n_items)
        if cfg.trainer.popularity_correction else None,
    )
    if objective.batches == "count":
        return _fit_counts(model, split, datamodule, module, start_tracker)
    history = EpochHistory(start_tracker, say=None if cfg.trainer.progress_bar else say)
    checkpoint, last = _checkpoint_callbacks(run_dir)
    callbacks: list[Any] = [history, *extra_callbacks, checkpoint, last]
    if cfg.trainer.progress_bar:
        callbacks.append(EpochProgressBar())
    cooldown = _cooldown_state(cfg, run_dir, ckpt_path)
    if cooldown is None:
        # Lightning's own choice of when to check: at the end of each training epoch when every epoch validates,
        # after each validation when val_every > 1 (then patience counts validations, never a stale metric).
        stopping = ([ConfiguredEarlyStopping(monitor=VAL_MONITOR, mode="max", patience=cfg.trainer.patience)]
                    if cfg.trainer.patience > 0 else [])
        trainer = _trainer(cfg, run_dir, callbacks + stopping, cfg.trainer.max_epochs)
        _run_fit(trainer, module, datamodule, ckpt_path)
        if not cfg.trainer.cooldown_epochs or trainer.interrupted or _out_of_time(trainer):
            return trainer, module, datamodule, history.history
        cooldown = _start_cooldown(run_dir, trainer.current_epoch)
        if cooldown is None:
            return trainer, module, datamodule, history.history
    first_epoch, ckpt_path = cooldown
    module.cooldown_epochs = cfg.trainer.cooldown_epochs
    trainer = _trainer(cfg, run_dir, callbacks, first_epoch + cfg.trainer.cooldown_epochs)
    _run_fit(trainer, module, datamodule, ckpt_path)
    return trainer, module, datamodule, history.history


def _checkpoint_callbacks(run_dir: Path) -> tuple[Any, Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from recsys.training.module import VAL_MONITOR

    # save_on_train_epoch_end: the checkpoint is written after EpochHistory recorded the epoch
    # (Lightning runs checkpoint callbacks last), so a resumed run knows what it already logged.
    best = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=VAL_MONITOR,
                           mode="max", save_top_k=1, save_on_train_epoch_end=True,
                           enable_version_counter=False)
    # last.ckpt is its own callback: Lightning's save_last only writes it on epochs that also saved a new best,
    # so a run stopped after an epoch that did not improve would resume from an older one.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    return best, last


def _trainer(cfg: RunConfig, run_dir: Path, callbacks: list[Any], max_epochs: int) -> Any:
    import lightning as L

    from recsys.training.checkpoints import AtomicCheckpointIO

    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    if cfg.trainer.val_every > 1:  # epochs without validation have no val_ndcg@10 to checkpoint on: expected
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    return L.Trainer(
        max_epochs=max_epochs,
        # max_minutes bounds the whole run, cool-down included: Lightning's timer is kept in the checkpoints
        max_time=timedelta(minutes=cfg.trainer.max_minutes) if cfg.trainer.max_minutes else None,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        precision=_precision(cfg.trainer.precision),
        gradient_clip_val=cfg.trainer.grad_clip,
        check_val_every_n_epoch=cfg.trainer.val_every,
        limit_train_batches=cfg.trainer.limit_train_batches,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # see SequenceDataModule.train_dataloader
        deterministic=cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available(),
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],  # a kill or a full disk never leaves a truncated last.ckpt
    )


def _run_fit(trainer: Any, module: Any, datamodule: Any, ckpt_path: Path | None) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None,
                    weights_only=True)


# ---------------------------------------------------------------------------------------------------------
# Cool-down (trainer.cooldown_epochs): a second fit that starts from the best epoch's weights and optimiser
# state, with the epoch count, history and timer of the last epoch, and anneals the learning rate to zero.

COOLDOWN_CKPT = "cooldown_start.ckpt"


def _cooldown_state(cfg: RunConfig, run_dir: Path, ckpt_path: Path | None) -> tuple[int, Path] | None:
    """(first cool-down epoch, checkpoint to fit from) when this fit is the cool-down: a resumed run that
    had begun it, or one whose main training had already ended (early stopped, or at max_epochs) and now
    asks for a cool-down. None: main training first."""
    if not cfg.trainer.cooldown_epochs or ckpt_path is None:
        return None
    from recsys.training.checkpoints import load_checkpoint_file

    state = load_checkpoint_file(ckpt_path)
    next_epoch = int(state["epoch"]) + 1
    started = _read_run_info(run_dir).get("cooldown_first_epoch")
    if started is not None:  # killed before the cool-down's first epoch was saved: start it again
        return int(started), ckpt_path if next_epoch > int(started) else run_dir / "checkpoints" / COOLDOWN_CKPT
    if _main_training_ended(cfg, state):
        return _start_cooldown(run_dir, next_epoch)
    return None


def _start_cooldown(run_dir: Path, first_epoch: int) -> tuple[int, Path] | None:
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
    best, last = load_checkpoint_file(folder / "best.ckpt"), load_checkpoint_file(folder / "last.ckpt")
    start = {**last, "state_dict": best["state_dict"], "optimizer_states": best["optimizer_states"],
             "lr_schedulers": [],
             "callbacks": {k: v for k, v in last["callbacks"].items() if not k.startswith("EarlyStopping")}}
    # Every process of a multi-process run writes the same file from the same two (an atomic replace each).
    AtomicCheckpointIO().save_checkpoint(start, folder / COOLDOWN_CKPT)
    _write_run_info(run_dir, {"cooldown_first_epoch": first_epoch, "cooldown_from_epoch": int(best["epoch"])})
    return first_epoch, folder / COOLDOWN_CKPT


def _main_training_ended(cfg: RunConfig, state: dict[str, Any]) -> bool:
    if int(state["epoch"]) + 1 >= cfg.trainer.max_epochs:
        return True
    stopping = [v for k, v in state.get("callbacks", {}).items() if k.startswith("EarlyStopping")]
    return bool(cfg.trainer.patience and stopping and stopping[0].get("wait_count", 0) >= cfg.trainer.patience)


def _refuse_finished_run(cfg: RunConfig, run_dir: Path) -> None:
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
    started = _read_run_info(run_dir).get("cooldown_first_epoch")
    if started is not None:
        if epochs_run < int(started) + cfg.trainer.cooldown_epochs:
            return None
        return f"{epochs_run} epochs, its cool-down of trainer.cooldown_epochs={cfg.trainer.cooldown_epochs} included"
    if cfg.trainer.cooldown_epochs or not _main_training_ended(cfg, state):
        return None  # a cool-down asked for now, or epochs left before max_epochs
    if epochs_run >= cfg.trainer.max_epochs:
        return f"{epochs_run} of trainer.max_epochs={cfg.trainer.max_epochs} epochs run"
    return f"early stopped after {epochs_run} epochs, trainer.patience={cfg.trainer.patience}"


def _out_of_time(trainer: Any) -> bool:
    from lightning.pytorch.callbacks import Timer

    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    return bool(timers) and (timers[0].time_remaining("train") or 0.0) <= 0.0


def _fit_counts(model: SequenceModel, split: Split, datamodule: Any, module: Any,
                start_tracker: Any) -> tuple[Any, Any, Any, list[dict[str, float]]]:
    """Objective "count" (the popularity baseline): the model is fitted by counting the training split, so
    there are no optimiser steps, epochs or checkpoints. Validation and test metrics then come from the same
    evaluator as every other model's (`_final_metrics`), and saving and MLflow logging are unchanged. A
    Trainer that never fits stands in for the fitted one (main process, no checkpoint, epoch 0)."""
    import lightning as L

    start_tracker()
    model.fit_counts(split.train[schema.ITEMS].to_list())
    datamodule.setup("validate")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    return trainer, module, datamodule, []


def _hand_over_item_texts(model: SequenceModel, dataset: PreparedDataset) -> None:
    """A text model (Recformer) reads items as text, not ids: give it the item table's text columns."""
    if model.needs_item_texts:
        from recsys.data.item_text import catalogue_attributes

        say(f"encoding the text of {dataset.n_items:,} items ({', '.join(_text_columns(dataset))})")
        started = time.perf_counter()
        fit = model.set_item_texts(catalogue_attributes(dataset.items, _text_columns(dataset), dataset.n_items))
        say(f"encoded {dataset.n_items:,} item texts in {time.perf_counter() - started:.1f} s")
        say(truncation_line(fit.token_counts, fit.budget))


def truncation_line(token_counts: list[int], max_item_tokens: int) -> str:
    """How much of the catalogue's text model.max_item_tokens cut, in one line: the share of item texts cut and
    the median and 90th-percentile length in tokens, to set max_item_tokens from."""
    if not token_counts:
        return "item texts: none"
    ordered = sorted(token_counts)
    cut = sum(count > max_item_tokens for count in ordered) / len(ordered)
    median = statistics.median(ordered)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"item texts: {cut:.1%} cut to model.max_item_tokens={max_item_tokens} (median {median:g} tokens, "
            f"90th percentile {p90})")


def say(line: str) -> None:
    """One line on what the run is doing, on stderr beside Lightning's progress bar (stdout keeps the
    results the CLI prints); from the first process only in a multi-process run."""
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        print(line, file=sys.stderr, flush=True)


def _text_columns(dataset: PreparedDataset) -> tuple[str, ...]:
    from recsys.data.item_text import text_columns_of

    return dataset.text_columns or text_columns_of(dataset.items)


def _precision(value: str) -> str:
    """'auto': bf16 mixed precision on a GPU that has it, else full fp32 (CPU bf16 is slower here)."""
    if value != "auto":
        return value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _quiet_libraries() -> None:
    """Lightning's device banners and tips, and MLflow's database set-up notes, say nothing a user of
    `recsys train` needs; warnings and errors still come through."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "mlflow.store", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    # MLflow draws a "Downloading artifacts" bar each time it reads back the model it just logged (pyfunc
    # flavour, registration): noise at the end of every run. Set the variable to true to have them back.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server that is down must not stall the end of a run for minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _configure_threads(cfg: RunConfig) -> None:
    # torch's own default counts the machine's cores, which a cgroup quota may not let this process use.
    torch.set_num_threads(cfg.trainer.threads or available_cpus())


def _load_weights(module: Any, checkpoint: Path) -> None:
    from recsys.training.checkpoints import load_checkpoint_file

    module.load_state_dict(load_checkpoint_file(checkpoint)["state_dict"])


def _final_metrics(module: Any, datamodule: Any, cfg: RunConfig) -> dict[str, float]:
    from recsys.evaluation.runner import evaluate_loader

    # Lightning hands the model back on the CPU after fitting; scoring every user is worth a GPU if there is one.
    gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    model = module.model.to("cuda" if gpu else "cpu").eval()
    metrics: dict[str, float] = {}
    for stage, loader in (("valid", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
        for key, value in evaluate_loader(model, loader, module.n_items).items():
            metrics[f"{stage}_{key}"] = value
    model.to("cpu")  # saved weights and later users expect CPU tensors
    return metrics


def _epoch_times(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds per epoch of optimisation alone (`epoch_s`) and of validation (`val_epoch_s`)."""
    train = [row["epoch_train_s"] for row in history if "epoch_train_s" in row]
    val = [row["epoch_val_s"] for row in history if row.get("epoch_val_s")]
    times = {}
    if train:
        times["epoch_s"] = sum(train) / len(train)
    if val:
        times["val_epoch_s"] = sum(val) / len(val)
    return times


def _best_epoch(history: list[dict[str, float]]) -> int:
    """The best validated epoch, counted from 1 (the first epoch is 1, as everything a user reads says;
    history rows and checkpoints keep Lightning's count from 0); -1 when no epoch was validated."""
    scored = [row for row in history if "val_ndcg@10" in row]
    if not scored:
        return -1
    return int(max(scored, key=lambda row: row["val_ndcg@10"])["epoch"]) + 1


# ---------------------------------------------------------------------------------------------------------
# Run folders


def _claim_run_dir(cfg: RunConfig) -> Path:
    """A new, empty run folder. mkdir without exist_ok is atomic, so two runs started in the same second
    in the same folder still get different folders. Worker processes of a multi-process run reuse the
    folder their launcher claimed."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(inherited)
    root = Path(cfg.tracking.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.model_name}-{cfg.data.name}-{cfg.data.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1000):
        candidate = root / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        os.environ[RUN_DIR_ENV] = str(candidate)
        _write_json_atomic(candidate / RUN_INFO, {"started": time.time()})
        return candidate
    raise ConfigError(f"{root}: could not claim a new run folder for {stem}")


def _write_config(run_dir: Path, cfg: RunConfig) -> None:
    import yaml

    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def _read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_INFO
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a recsys run folder (no {RUN_INFO})")
    return json.loads(path.read_text(encoding="utf-8"))


def _write_run_info(run_dir: Path, values: dict[str, Any]) -> None:
    path = run_dir / RUN_INFO
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    _write_json_atomic(path, {**current, **values})


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def latest_run_dir(cfg: RunConfig) -> Path:
    """The most recently started run folder under tracking.output_dir."""
    root = Path(cfg.tracking.output_dir)
    runs = [p for p in root.glob("*/") if (p / RUN_INFO).is_file()] if root.is_dir() else []
    if not runs:
        raise ConfigError(f"{root}: no run to resume")
    return max(runs, key=lambda p: _read_run_info(p).get("started", 0.0))


def resume_config(run_dir: str | Path, overrides: list[str]) -> RunConfig:
    """The config a run folder was started with, plus overrides (e.g. a larger trainer.max_epochs)."""
    import yaml

    from recsys.config import apply_overrides

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a recsys run folder (no config.yaml)")
    data = apply_overrides(yaml.safe_load(path.read_text(encoding="utf-8")), overrides)
    return run_config_from_dict(data, where=str(path))


# ---------------------------------------------------------------------------------------------------------
# Saving and tracking


def _save(cfg: RunConfig, model: SequenceModel, dataset: PreparedDataset, split: Split,
          metrics: dict[str, float], run_dir: Path, tracker: Tracker | None) -> Path:
    histories = dataset.sequences.select(schema.USER_IDX, schema.ITEMS, schema.TIMESTAMPS)
    saved = SavedModel(
        model_name=cfg.model_name,
        config=cfg.to_dict(),
        state_dict=model.state_dict(),
        n_items=dataset.n_items,
        item_map=dataset.item_map,
        user_map=dataset.user_map,
        items=dataset.items,
        histories=histories,
        metrics=metrics,
        extra={"dataset": dataset.name, "preset": dataset.preset, "fingerprint": dataset.fingerprint,
               "split": split.kind, "mlflow_run_id": tracker.run_id if tracker else None,
               "text_columns": list(_text_columns(dataset))},
        bundle=model.bundle(),  # e.g. a text model's tokenizer
    )
    return save_model(saved, _free_model_dir(run_dir))


def _free_model_dir(run_dir: Path) -> Path:
    """run_dir/model, or model-2, model-3, ... when a resumed run already saved one (never overwritten)."""
    candidate, n = run_dir / "model", 1
    while candidate.exists():
        n += 1
        candidate = run_dir / f"model-{n}"
    return candidate


def _log_run_start(tracker: Tracker, cfg: RunConfig, dataset: PreparedDataset, split: Split,
                   config_file: str | Path | None, run_dir: Path, objective: Objective) -> None:
    from recsys.data.prepare import repeated_target_shares

    loss = objective.loss if objective.batches != "count" else ""  # a counting model has none
    tracker.log_params(flatten(cfg.to_dict()))
    tracker.log_params({"dataset.fingerprint": dataset.fingerprint, "dataset.n_users": dataset.n_users,
                        "dataset.n_items": dataset.n_items, "dataset.n_interactions": dataset.n_interactions,
                        "dataset.duplicates_dropped": dataset.duplicates_dropped,
                        **{f"dataset.{split}_targets_repeating_previous": f"{share:.4f}"
                           for split, share in repeated_target_shares(dataset).items()},
                        "split.n_valid": split.valid.height, "split.n_test": split.test.height})
    tags = {"model": cfg.model_name, "dataset": cfg.data.name, "preset": cfg.data.preset,
            "split": split.kind, "loss": loss, "run_dir": str(run_dir.resolve()),
            "mlflow.note.content": _description(cfg, dataset, split, loss)}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    tracker.set_tags(tags)
    tracker.log_artifact(run_dir / "config.yaml")
    if config_file is not None and Path(config_file).is_file():
        tracker.log_artifact(config_file, "source_config")


def _description(cfg: RunConfig, dataset: PreparedDataset, split: Split, loss: str) -> str:
    return (f"{cfg.model_name} on {dataset.name} (preset {dataset.preset}: {dataset.n_users:,} users, "
            f"{dataset.n_items:,} items, {dataset.n_interactions:,} interactions), {split.kind} split, "
            f"full ranking over all items, seen items excluded; " + (f"loss {loss}." if loss else "no loss (counted)."))


def _finish_tracking(tracker: Tracker | None, cfg: RunConfig, metrics: dict[str, float],
                     history: list[dict[str, float]], run_dir: Path, model_dir: Path,
                     after_logging: AfterLogging | None) -> str | None:
    from recsys.training.plots import plot_learning_curves, plot_metrics_at_k

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    title = f"{cfg.model_name} on {cfg.data.name} ({cfg.data.preset})"
    if history:
        plot_learning_curves(history, plots / "learning_curves.png", title)
    plot_metrics_at_k({k: v for k, v in metrics.items() if k.startswith("test_")}, plots / "test_metrics_at_k.png",
                      f"test metrics at K: {title}")
    if tracker is None or not tracker.active:
        return None
    final_step = int(metrics.get("epochs_run", 0))
    tracker.log_metrics(metrics, step=final_step)
    tracker.log_artifact(plots, "plots")
    tracker.log_artifact(model_dir, MODEL_ARTIFACT)
    if after_logging is not None:
        try:  # an extra flavour (the CLI's MLflow pyfunc) is a bonus: its failure must not fail the run
            after_logging(tracker.uri, tracker.run_id, model_dir)
        except Exception as exc:  # noqa: BLE001 - like Tracker._call: warn, keep the run and the saved model
            warnings.warn(f"could not log an extra model flavour ({str(exc).strip()[:200]}); the model "
                          "directory is still logged as an artifact", RuntimeWarning, stacklevel=2)
    version = None
    if cfg.tracking.register_as:
        tags = {k.replace("@", "_at_"): f"{v:.6g}" for k, v in metrics.items() if k.startswith("test_") and "@10" in k}
        description = (f"{cfg.model_name} on {cfg.data.name} (preset {cfg.data.preset}), {cfg.data.split} split, "
                       f"full ranking: test NDCG@10 {metrics.get('test_ndcg@10', float('nan')):.4f}, "
                       f"HR@10 {metrics.get('test_hr@10', float('nan')):.4f}; run folder {run_dir.resolve()}")
        version = tracker.register_model(cfg.tracking.register_as, MODEL_ARTIFACT, tags, description)
    tracker.finish()
    return version


def _experiment(cfg: RunConfig) -> str:
    return cfg.tracking.experiment or f"recsys-{cfg.data.name}"


def _run_name(cfg: RunConfig, run_dir: Path) -> str:
    return cfg.tracking.run_name or run_dir.name


__all__ = ["TrainResult", "load_run_config", "resume_config", "train"]
