"""`recsys train`: one run from config to saved model, tracked in MLflow.

Steps: prepare data (cached) -> split -> model -> Lightning fit with early stopping on validation NDCG@10
-> reload the best epoch -> full-ranking validation and test metrics -> saved model directory -> MLflow.
Each run writes into a fresh folder under `tracking.output_dir`, so runs never clobber each other.
A validation-only run (`test=False`, what `recsys tune` trains) withholds the test split right after it is
made: its rows are never turned into batches nor scored, and the run has no test metric.

This file is the run itself and its fit. Around it: `run_folder.py` (the run folder and its run.json),
`resume.py` (what `--resume` continues, and refusing a finished run), `cooldown.py` (the cool-down's
starting checkpoint) and `publish.py` (the saved model directory, MLflow logging and registration, plots).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from recsys.cpus import available_cpus
from recsys.data import schema
from recsys.data.dataset import PreparedDataset, Split
from recsys.errors import ConfigError
from recsys.models import SequenceModel, build_model
from recsys.run_config import RunConfig
from recsys.training.cooldown import cooldown_state, start_cooldown
from recsys.training.launch import check_launch, is_first_process, lightning_accelerator
from recsys.training.publish import (AfterLogging, experiment_name, finish_tracking, log_run_start, run_name,
                                     save_run_model, text_columns)
from recsys.training.resume import refuse_finished_run
from recsys.training.run_folder import (claim_run_dir, read_run_info, replace_run_info, write_config,
                                        write_run_info)
from recsys.training.tracking import Tracker, resolve_tracking_uri


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path | None  # None on worker processes of a multi-process run
    run_id: str | None
    tracking_uri: str
    metrics: dict[str, float]
    registered_version: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch (see EpochHistory)
    contrastive: str = "none"  # the contrastive option that trained it (trainer.contrastive.method)


def train(cfg: RunConfig, config_file: str | Path | None = None, resume: str | Path | None = None,
          after_logging: AfterLogging | None = None, callbacks: list[Any] | None = None, *, test: bool = True,
          tags: dict[str, str] | None = None) -> TrainResult:
    """Train per `cfg`; with `resume` (a run folder) continue that run from its last checkpoint.

    `after_logging(tracking_uri, run_id, model_dir)` runs once the model directory is logged and before the
    MLflow run closes: the CLI uses it to add the pyfunc flavour, which lives in a layer above training.
    `callbacks` are extra Lightning callbacks for the fit (benchmarks use one to time the way to a target;
    `recsys tune` one that prunes a trial). `test=False`: a validation-only run, for model selection; the
    test split is withheld (see `withhold_test`), so the metrics are `valid_*` alone. `tags` are added to
    the new MLflow run's own (a tuning trial's `mlflow.parentRunId`).
    """
    check_launch(cfg.trainer)  # before anything is read or imported: a launch that cannot work says so in one line
    import lightning as L

    from recsys.data.prepare import leakage_warning, prepare_dataset
    from recsys.data.splits import make_split, not_evaluated

    if resume is not None:
        refuse_finished_run(cfg, Path(resume))
    _configure_threads(cfg)
    quiet_libraries()
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
    if not test:
        split = withhold_test(split)
    say(f"building the model: {cfg.model_name} over {dataset.n_items:,} items "
        f"({dataset.n_users:,} users, {dataset.n_interactions:,} interactions)")
    model = build_model(cfg.model_name, cfg.model, dataset.n_items)
    _check_contrastive(cfg, model)
    _hand_over_item_texts(model, dataset)

    run_dir = Path(resume) if resume is not None else claim_run_dir(cfg)
    info = read_run_info(run_dir) if resume is not None else {}
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume is not None and not last_ckpt.is_file():
        raise ConfigError(f"{run_dir}: nothing to resume (no checkpoints/last.ckpt)")
    if info.pop("failed", None) is not None and is_first_process():
        replace_run_info(run_dir, info)  # resumed after a failure: what failed is in its MLflow run's tags

    tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    holder: dict[str, Tracker | None] = {"tracker": None}
    tracking_setup_s = [0.0]  # kept out of fit_s: a new store's schema alone takes seconds

    def start_tracker() -> Tracker | None:
        started = time.perf_counter()
        tracker = Tracker(tracking_uri, experiment_name(cfg), run_name(cfg, run_dir),
                          run_id=info.get("run_id"), enabled=cfg.tracking.enabled)
        if tracker.active and resume is None:
            log_run_start(tracker, cfg, dataset, split, config_file, run_dir, model.objective())
            tracker.set_tags({**({} if test else {"recsys.test_split": "withheld"}), **(tags or {})})
        write_run_info(run_dir, {"run_id": tracker.run_id, "tracking_uri": tracking_uri})
        holder["tracker"] = tracker
        tracking_setup_s[0] += time.perf_counter() - started
        return tracker

    try:
        if resume is None and is_first_process():
            write_config(run_dir, cfg)
        fit_started = time.perf_counter()
        trainer, module, datamodule, history = _fit(cfg, model, dataset, split, run_dir, start_tracker,
                                                    last_ckpt if resume is not None else None, callbacks or [])
        if not trainer.is_global_zero:
            return TrainResult(run_dir, None, None, tracking_uri, {})
        return _finish(cfg, trainer, module, datamodule, history, dataset, split, run_dir, holder["tracker"],
                       tracking_uri, fit_started, tracking_setup_s[0], after_logging, test)
    except BaseException as exc:
        _mark_failed(run_dir, holder["tracker"], exc, keep=resume is not None or last_ckpt.is_file())
        raise


def _finish(cfg: RunConfig, trainer: Any, module: Any, datamodule: Any, history: list[dict[str, float]],
            dataset: PreparedDataset, split: Split, run_dir: Path, tracker: Tracker | None, tracking_uri: str,
            fit_started: float, tracking_setup_s: float, after_logging: AfterLogging | None,
            test: bool = True) -> TrainResult:
    """After the fit: the best weights back, validation (and test) metrics, the saved model, the MLflow run
    closed."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        _load_weights(module, Path(best))
    metrics = _final_metrics(module, datamodule, cfg, test)
    metrics["epochs_run"] = float(trainer.current_epoch)
    metrics["best_epoch"] = float(_best_epoch(history))  # counted from 1, as the console shows epochs
    # this process's fit (after a resume: since it), without starting the MLflow run
    metrics["fit_s"] = time.perf_counter() - fit_started - tracking_setup_s
    metrics.update(_epoch_times(history))
    model_dir = save_run_model(cfg, module.model, dataset, split, metrics, run_dir, tracker)
    version = finish_tracking(tracker, cfg, metrics, history, run_dir, model_dir, after_logging)
    return TrainResult(run_dir, model_dir, tracker.run_id if tracker else None, tracking_uri, metrics, version,
                       history, cfg.trainer.contrastive.method)


def _check_contrastive(cfg: RunConfig, model: SequenceModel) -> None:
    """A contrastive loss needs gradient steps to join: a counting model has none to add it to."""
    method = cfg.trainer.contrastive.method
    if method == "none":
        return
    if model.objective().batches == "count":
        raise ConfigError(f"trainer.contrastive: {method} needs a model trained by gradient steps; {cfg.model_name} "
                          "is fitted by counting (use trainer.contrastive=none)")
    say(f"contrastive self-supervision: {method} (weight {cfg.trainer.contrastive.weight:g}, temperature "
        f"{cfg.trainer.contrastive.temperature:g}, augmentations {', '.join(cfg.trainer.contrastive.augmentations)})")


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
    if not is_first_process():
        return  # the folder is the first process's (global rank 0) to keep or remove
    if keep:
        write_run_info(run_dir, {"failed": reason})
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
        model, dataset.n_items, loss=objective.loss,
        trainer_config=cfg.trainer,
        log_popularity=log_popularity(split.train[schema.ITEMS].to_list(), dataset.n_items)
        if cfg.trainer.popularity_correction else None,
        time_context=cfg.evaluation.time_context,
        exclude_seen=cfg.evaluation.exclude_seen,
        negative_log_q=log_popularity(split.train[schema.ITEMS].to_list(), dataset.n_items)
        if objective.loss is not None and objective.loss.negatives == "popularity" else None,
    )
    if objective.batches == "count":
        return _fit_counts(model, split, datamodule, module, start_tracker)
    history = EpochHistory(start_tracker, say=None if cfg.trainer.progress_bar else say)
    checkpoint, last = _checkpoint_callbacks(run_dir)
    callbacks: list[Any] = [history, *extra_callbacks, checkpoint, last]
    if cfg.trainer.progress_bar:
        callbacks.append(EpochProgressBar())
    cooldown = cooldown_state(cfg, run_dir, ckpt_path)
    if cooldown is None:
        # Lightning's own choice of when to check: at the end of each training epoch when every epoch validates,
        # after each validation when val_every > 1 (then patience counts validations, never a stale metric).
        stopping = ([ConfiguredEarlyStopping(monitor=VAL_MONITOR, mode="max", patience=cfg.trainer.patience)]
                    if cfg.trainer.patience > 0 else [])
        trainer = _trainer(cfg, run_dir, callbacks + stopping, cfg.trainer.max_epochs)
        _run_fit(trainer, module, datamodule, ckpt_path)
        if not cfg.trainer.cooldown_epochs or trainer.interrupted or _out_of_time(trainer):
            return trainer, module, datamodule, history.history
        cooldown = _start_cooldown_once(trainer, run_dir)
        if cooldown is None:
            return trainer, module, datamodule, history.history
    first_epoch, ckpt_path = cooldown
    module.cooldown_epochs = cfg.trainer.cooldown_epochs
    trainer = _trainer(cfg, run_dir, callbacks, first_epoch + cfg.trainer.cooldown_epochs)
    _run_fit(trainer, module, datamodule, ckpt_path)
    return trainer, module, datamodule, history.history


def _start_cooldown_once(trainer: Any, run_dir: Path) -> tuple[int, Path] | None:
    """The cool-down's start, written by the first process alone into its run folder and handed to the others
    (whose run_dir is only a stand-in when torchrun or srun started them: see run_folder.claim_run_dir)."""
    started = start_cooldown(run_dir, trainer.current_epoch) if trainer.is_global_zero else None
    return trainer.strategy.broadcast(started, src=0) if trainer.world_size > 1 else started


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
    # Validation metrics are gathered over the processes before they are logged (RankingAccumulator.all_reduce):
    # Lightning's advice to sync them again would average equal numbers.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    if cfg.trainer.val_every > 1:  # epochs without validation have no val_ndcg@10 to checkpoint on: expected
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    return L.Trainer(
        max_epochs=max_epochs,
        # max_minutes bounds the whole run, cool-down included: Lightning's timer is kept in the checkpoints
        max_time=timedelta(minutes=cfg.trainer.max_minutes) if cfg.trainer.max_minutes else None,
        # Lightning picks the cluster environment (SLURM, torchrun, its own) and the launcher: recsys sets neither.
        accelerator=lightning_accelerator(cfg.trainer),
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=_precision(cfg.trainer.precision),
        # MCLRec's steps are manual (training.module), where Lightning refuses to clip: the module clips itself.
        gradient_clip_val=None if cfg.trainer.contrastive.method == "mclrec" else cfg.trainer.grad_clip,
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

        say(f"encoding the text of {dataset.n_items:,} items ({', '.join(text_columns(dataset))})")
        started = time.perf_counter()
        fit = model.set_item_texts(catalogue_attributes(dataset.items, text_columns(dataset), dataset.n_items))
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
    results the CLI prints); from the first process (global rank 0) only in a multi-process run, whichever
    node it is on."""
    if is_first_process():
        print(line, file=sys.stderr, flush=True)


def _precision(value: str) -> str:
    """'auto': bf16 mixed precision on a GPU that has it, else full fp32 (CPU bf16 is slower here)."""
    if value != "auto":
        return value
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def quiet_libraries() -> None:
    """Lightning's device banners and tips, MLflow's database set-up notes and its "Validating input example"
    (as the pyfunc is logged) say nothing a user of `recsys train` needs; warnings and errors still come
    through."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "mlflow.store", "mlflow.pyfunc", "alembic"):
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


def _final_metrics(module: Any, datamodule: Any, cfg: RunConfig, test: bool = True) -> dict[str, float]:
    from recsys.evaluation.runner import TIME_CONTEXTS, evaluate_loader

    # Lightning hands the model back on the CPU after fitting; scoring every user is worth a GPU if there is one.
    gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    model = module.model.to("cuda" if gpu else "cpu").eval()
    context, exclude = cfg.evaluation.time_context, cfg.evaluation.exclude_seen
    metrics: dict[str, float] = {}
    # The first process alone, over every user (after the fit, the other processes have returned); the test
    # split only when the run may read it (recsys tune's trials may not).
    for stage in ["valid"] + (["test"] if test else []):
        scored = evaluate_loader(model, datamodule.all_users(stage), module.n_items, exclude_history=exclude,
                                 time_context=context)
        for key, value in scored.items():
            metrics[f"{stage}_{key}"] = value
    if model.uses_timestamps and test:
        # Both protocols, so that a time-aware model's figure with the target's timestamp is never read
        # without the one a request without a clock would get (test_time_none_*, test_time_target_*).
        headline = {key[len("test_"):]: value for key, value in metrics.items() if key.startswith("test_")}
        for other in TIME_CONTEXTS:
            scored = headline if other == context else evaluate_loader(
                model, datamodule.all_users("test"), module.n_items, exclude_history=exclude, time_context=other)
            metrics.update({f"test_time_{other}_{key}": value for key, value in scored.items()})
    model.to("cpu")  # saved weights and later users expect CPU tensors
    return metrics


def withhold_test(split: Split) -> Split:
    """The split with its test rows taken out (an empty frame of the same columns in their place): what a
    validation-only run sees, so that nothing downstream (batches, scoring, logging) can read the test
    targets, by mistake or otherwise. Model selection on validation only (STYLE.md, honest evaluation)."""
    import dataclasses

    return dataclasses.replace(split, test=split.test.clear())


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


__all__ = ["TrainResult", "train"]
