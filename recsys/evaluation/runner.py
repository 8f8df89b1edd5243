"""Scoring a model on a split: the same code for validation during training, the final test, and
`recsys evaluate` on a saved model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from recsys.evaluation.metrics import DEFAULT_KS, RankingAccumulator
from recsys.models.base import SequenceModel


def evaluate_loader(
    model: SequenceModel,
    batches: Iterable[dict[str, torch.Tensor]],
    n_items: int,
    ks: tuple[int, ...] = DEFAULT_KS,
    exclude_history: bool = True,
) -> dict[str, float]:
    """Full-ranking metrics over batches of `EvaluationRows` (history, target, seen).

    The model's `score` ranks the catalogue (with the history's timestamps where the batches carry them); it is run in eval mode
    without gradients, on whatever device its parameters are.
    """
    accumulator = RankingAccumulator(n_items, ks)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                times = batch.get("history_times")
                scores = model.score(batch["history"].to(device), None if times is None else times.to(device)).float()
                seen = batch["seen"].to(device) if exclude_history else None
                accumulator.update(scores, batch["target"].to(device), seen, inplace=True)
    finally:
        model.train(was_training)
    return accumulator.compute()


def evaluate_saved_model(
    model_dir: str | Path,
    split: str = "test",
    exclude_history: bool = True,
    batch_size: int = 512,
    data_path: str | None = None,
) -> dict[str, Any]:
    """Re-create the split a saved model was trained on and score the model on it.

    The data are prepared again from the config saved with the model (the cache makes this cheap); the
    dataset fingerprint must equal the one the model was trained on, so a changed file cannot silently
    give numbers for different data.
    """
    from torch.utils.data import DataLoader

    from recsys.data.batches import EvaluationRows, pass_through
    from recsys.data.prepare import prepare_dataset
    from recsys.data.splits import make_split
    from recsys.errors import ConfigError, DataError
    from recsys.saved_model import build_saved_model, load_model_files
    from recsys.run_config import run_config_from_dict

    if split not in ("valid", "test"):
        raise ConfigError(f"--split: expected valid or test, got {split!r}")
    saved = load_model_files(model_dir)
    cfg = run_config_from_dict(saved.config, where=f"{model_dir}/config.yaml")
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
    metrics = evaluate_loader(model, loader, saved.n_items, exclude_history=exclude_history)
    return {"model_dir": str(model_dir), "split": split, "exclude_history": exclude_history, **metrics}


def _with_path(data_cfg: Any, path: str) -> Any:
    from recsys.config import replace

    return replace(data_cfg, path=path)
