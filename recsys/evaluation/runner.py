"""Scoring a model on a split: the same code for validation during training, the final test, and
`recsys evaluate` on a saved model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from recsys.evaluation.metrics import DEFAULT_KS, RankingAccumulator, repeat_targets
from recsys.models.base import SequenceModel


TIME_CONTEXTS = ("none", "target")


def evaluate_loader(
    model: SequenceModel,
    batches: Iterable[dict[str, torch.Tensor]],
    n_items: int,
    ks: tuple[int, ...] = DEFAULT_KS,
    exclude_history: bool = True,
    time_context: str = "none",
) -> dict[str, float]:
    """Full-ranking metrics over batches of `EvaluationRows` (history, target, seen), the seen items left out
    of the ranking when `exclude_history` (evaluation.exclude_seen), split into repeat and explore targets.

    The model's `score` ranks the catalogue (with the history's timestamps where the batches carry them, and
    asked at the time `time_context` says: `query_time`); it is run in eval mode without gradients, on
    whatever device its parameters are.
    """
    accumulator = RankingAccumulator(n_items, ks)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                times, at = batch.get("history_times"), query_time(batch, time_context)
                scores = model.score(batch["history"].to(device), None if times is None else times.to(device),
                                     None if at is None else at.to(device)).float()
                seen, target = batch["seen"].to(device), batch["target"].to(device)
                accumulator.update(scores, target, seen if exclude_history else None, inplace=True,
                                   repeats=repeat_targets(seen, target))
    finally:
        model.train(was_training)
    return accumulator.compute()


def query_time(batch: dict[str, torch.Tensor], time_context: str) -> torch.Tensor | None:
    """When an evaluation batch's predictions are asked (`at`, `[batch]`): None under "none" (the model's own
    default, the last interaction's time); the target's timestamp under "target" (`evaluation.time_context`)."""
    if time_context not in TIME_CONTEXTS:
        raise ValueError(f"time_context must be one of {', '.join(TIME_CONTEXTS)}, got {time_context!r}")
    if time_context == "none":
        return None
    if "target_time" not in batch:
        raise ValueError("time_context 'target' needs batches with target_time (EvaluationRows of a time-aware model)")
    return batch["target_time"]


def evaluate_saved_model(
    model_dir: str | Path,
    split: str = "test",
    exclude_history: bool | None = None,
    batch_size: int = 512,
    data_path: str | None = None,
    time_context: str | None = None,
) -> dict[str, Any]:
    """Re-create the split a saved model was trained on and score the model on it, asked at the time
    `time_context` says (None: the model's config's `evaluation.time_context`), with the seen items excluded
    as `exclude_history` says (None: the config's `evaluation.exclude_seen`).

    The data are prepared again from the config saved with the model (the cache makes this cheap); the
    dataset fingerprint must equal the one the model was trained on, so a changed file cannot silently
    give numbers for different data.
    """
    from torch.utils.data import DataLoader

    from recsys.data.batches import EvaluationRows, pass_through
    from recsys.data.prepare import prepare_dataset
    from recsys.data.splits import make_split
    from recsys.errors import ConfigError, DataError
    from recsys.models import MODELS
    from recsys.saved_model import build_saved_model, load_model_files
    from recsys.run_config import run_config_from_dict

    if split not in ("valid", "test"):
        raise ConfigError(f"--split: expected valid or test, got {split!r}")
    saved = load_model_files(model_dir)
    cfg = run_config_from_dict(saved.config, where=f"{model_dir}/config.yaml")
    time_context = cfg.evaluation.time_context if time_context is None else time_context
    exclude_history = cfg.evaluation.exclude_seen if exclude_history is None else exclude_history
    if time_context not in TIME_CONTEXTS:
        raise ConfigError(f"--time-context: expected {' or '.join(TIME_CONTEXTS)}, got {time_context!r}")
    if time_context != "none" and not MODELS[cfg.model_name][0].uses_timestamps:
        raise ConfigError(f"{model_dir}: --time-context {time_context}: {cfg.model_name} reads no timestamps")
    data_cfg = cfg.data if data_path is None else _with_path(cfg.data, data_path)
    dataset = prepare_dataset(data_cfg)
    expected = saved.extra.get("fingerprint")
    if expected and dataset.fingerprint != expected:
        raise DataError(
            f"{model_dir}: the data prepared now (fingerprint {dataset.fingerprint[:12]}) differ from the data "
            f"the model was trained on ({str(expected)[:12]}); point --data-path at the original files"
        )
    frame = getattr(make_split(dataset, data_cfg), split)
    _, model = build_saved_model(saved, model_dir)
    rows = EvaluationRows(frame, model.max_len, with_timestamps=model.uses_timestamps)
    loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=pass_through)
    metrics = evaluate_loader(model, loader, saved.n_items, exclude_history=exclude_history, time_context=time_context)
    return {"model_dir": str(model_dir), "split": split, "exclude_history": exclude_history,
            **({"time_context": time_context} if model.uses_timestamps else {}), **metrics}


def _with_path(data_cfg: Any, path: str) -> Any:
    from recsys.config import replace

    return replace(data_cfg, path=path)
