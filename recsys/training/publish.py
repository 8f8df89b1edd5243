"""What a run leaves for others: its MLflow run (params, tags and config as it starts; metrics, plots and the
model directory at the end, and a registered version on request) and the saved model directory.

Everything here goes through `Tracker`, so a tracking store that fails never fails the run: the saved model
directory is written first and stays whatever MLflow does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from recsys.config import flatten
from recsys.data import schema
from recsys.data.dataset import PreparedDataset, Split
from recsys.models import Objective, SequenceModel
from recsys.run_config import RunConfig
from recsys.saved_model import SavedModel, save_model
from recsys.training.tracking import Tracker, git_commit

# (tracking URI, run id, model directory) -> the URI of a model it logged (to register), or None
AfterLogging = Callable[[str, str, Path], "str | None"]
MODEL_ARTIFACT = "model"


def experiment_name(cfg: RunConfig) -> str:
    return cfg.tracking.experiment or f"recsys-{cfg.data.name}"


def run_name(cfg: RunConfig, run_dir: Path) -> str:
    return cfg.tracking.run_name or run_dir.name


def text_columns(dataset: PreparedDataset) -> tuple[str, ...]:
    """The item table's text columns: those the dataset names, else those its item table holds."""
    from recsys.data.item_text import text_columns_of

    return dataset.text_columns or text_columns_of(dataset.items)


def log_run_start(tracker: Tracker, cfg: RunConfig, dataset: PreparedDataset, split: Split,
                  config_file: str | Path | None, run_dir: Path, objective: Objective) -> None:
    """A new MLflow run's params (the flattened config, the dataset's sizes), tags and config files."""
    from recsys.data.prepare import repeated_target_shares

    loss = objective.loss.name if objective.loss is not None else ""  # a counting model has none
    tracker.log_params(flatten(cfg.to_dict()))
    tracker.log_params({"dataset.fingerprint": dataset.fingerprint, "dataset.n_users": dataset.n_users,
                        "dataset.n_items": dataset.n_items, "dataset.n_interactions": dataset.n_interactions,
                        "dataset.duplicates_dropped": dataset.duplicates_dropped,
                        **{f"dataset.{split}_targets_repeating_previous": f"{share:.4f}"
                           for split, share in repeated_target_shares(dataset).items()},
                        "split.n_valid": split.valid.height, "split.n_test": split.test.height})
    tags = {"model": cfg.model_name, "dataset": cfg.data.name, "preset": cfg.data.preset,
            "split": split.kind, "loss": loss, "contrastive": cfg.trainer.contrastive.method,
            "run_dir": str(run_dir.resolve()),
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
            f"full ranking over all items, {seen_label(cfg)}{time_context_label(cfg, '; ')}; "
            + (f"loss {loss}" if loss else "no loss (counted)")
            + (f", contrastive {cfg.trainer.contrastive.method}." if cfg.trainer.contrastive.method != "none" else "."))


def seen_label(cfg: RunConfig) -> str:
    """Whether the results ranked the user's history items (evaluation.exclude_seen), as every result says."""
    if cfg.evaluation.exclude_seen:
        return "seen items excluded (evaluation.exclude_seen: true)"
    return "seen items ranked too (evaluation.exclude_seen: false)"


def time_context_label(cfg: RunConfig, lead: str = "") -> str:
    """How a time-aware model's results were asked ('' for a model that reads no timestamps), for every place
    a result is shown: the run's description, plots, the console."""
    from recsys.models import MODELS

    if not MODELS[cfg.model_name][0].uses_timestamps:
        return ""
    if cfg.evaluation.time_context == "target":
        return f"{lead}asked at the target's timestamp (evaluation.time_context: target)"
    return f"{lead}asked at the last interaction (evaluation.time_context: none)"


def save_run_model(cfg: RunConfig, model: SequenceModel, dataset: PreparedDataset, split: Split,
                   metrics: dict[str, float], run_dir: Path, tracker: Tracker | None) -> Path:
    """The trained model as a saved model directory in the run folder (see `_free_model_dir`); its path."""
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
               "text_columns": list(text_columns(dataset))},
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


def finish_tracking(tracker: Tracker | None, cfg: RunConfig, metrics: dict[str, float],
                    history: list[dict[str, float]], run_dir: Path, model_dir: Path,
                    after_logging: AfterLogging | None) -> str | None:
    """Plots into run_dir/plots; then, when tracking is on, the final metrics, plots and model directory
    logged, `after_logging` called, the model registered when tracking.register_as asks (the model
    `after_logging` logged, else the model directory), and the MLflow run closed. Returns the registered
    version, if any."""
    from recsys.training.plots import plot_learning_curves, plot_metrics_at_k

    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    title = f"{cfg.model_name} on {cfg.data.name} ({cfg.data.preset})"
    if history:
        plot_learning_curves(history, plots / "learning_curves.png", title)
    # A validation-only run (recsys tune's trials) has no test metric: its plot is of validation.
    stage = "test" if any(k.startswith("test_") for k in metrics) else "valid"
    headline = {k: v for k, v in metrics.items() if k.startswith(f"{stage}_") and not k.startswith("test_time_")}
    plot_metrics_at_k(headline, plots / f"{stage}_metrics_at_k.png",
                      f"{'test' if stage == 'test' else 'validation'} metrics at K: {title}{time_context_label(cfg, ', ')}")
    if tracker is None or not tracker.active:
        return None
    final_step = int(metrics.get("epochs_run", 0))
    tracker.log_metrics(metrics, step=final_step)
    tracker.log_artifact(plots, "plots")
    tracker.log_artifact(model_dir, MODEL_ARTIFACT)
    logged = None
    if after_logging is not None:
        try:  # an extra flavour (the CLI's MLflow pyfunc) is a bonus: its failure must not fail the run
            logged = after_logging(tracker.uri, tracker.run_id, model_dir)
        except Exception as exc:  # noqa: BLE001 - like Tracker._call: warn, keep the run and the saved model
            warnings.warn(f"could not log an extra model flavour ({str(exc).strip()[:200]}); the model "
                          "directory is still logged as an artifact (and registered, if asked, as that: "
                          "recsys loads it, `mlflow models serve` cannot)", RuntimeWarning, stacklevel=2)
    version = None
    if cfg.tracking.register_as:
        tags = {k.replace("@", "_at_"): f"{v:.6g}" for k, v in metrics.items() if k.startswith("test_") and "@10" in k}
        description = (f"{cfg.model_name} on {cfg.data.name} (preset {cfg.data.preset}), {cfg.data.split} split, "
                       f"full ranking: test NDCG@10 {metrics.get('test_ndcg@10', float('nan')):.4f}, "
                       f"HR@10 {metrics.get('test_hr@10', float('nan')):.4f}; run folder {run_dir.resolve()}")
        # the logged pyfunc when there is one, so that `mlflow models serve -m models:/NAME/N` works
        source = logged or f"runs:/{tracker.run_id}/{MODEL_ARTIFACT}"
        version = tracker.register_model(cfg.tracking.register_as, source, tags, description)
    tracker.finish()
    return version
