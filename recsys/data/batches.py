"""Sequences as tensors: training windows per objective, and evaluation batches.

The objective lives in the data (as in RecTools): the "shift" objective (SASRec, GRU4Rec) predicts item t+1
from items up to t; the "mask" objective (BERT4Rec) hides items and predicts them. Everything is
pre-built once as one left-padded int tensor, so a training step slices a tensor instead of collating
Python lists (per-sample collate was a visible share of a CPU epoch). For models that read time, the
items' timestamps are cut, padded (0) and trimmed exactly like the items, and batches carry them as
`input_times` (each input item's), `query_times` (each target's: when the prediction is asked) and, for
evaluation, `history_times` and `target_time`.
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from recsys.config import TrainWindows
from recsys.data import schema


def left_pad(sequences: list[np.ndarray] | pl.Series, length: int) -> torch.Tensor:
    """Keep the last `length` items of each sequence and left-pad with 0: `[n, length]` int64."""
    if isinstance(sequences, pl.Series):
        sequences = [np.asarray(s, dtype=np.int64) for s in sequences.to_list()]
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail):] = tail
    return torch.from_numpy(out)


def training_windows(train: pl.DataFrame, max_len: int, windows: TrainWindows,
                     column: str = schema.ITEMS) -> torch.Tensor:
    """Cut training sequences into windows of `max_len + 1` items, left-padded: `[n_windows, max_len + 1]`.
    With `column=schema.TIMESTAMPS`, the same windows of the items' timestamps (row for row).

    "last": one window per user, the most recent `max_len + 1` items (the SASRec/BERT4Rec papers').
    "all": also the older history, in non-overlapping windows taken back from the end, so that long
    histories are not thrown away. Sequences shorter than 2 items teach nothing and are skipped.
    `windows` is trainer.train_windows, checked when the config loaded; any other value is refused here too.
    """
    if windows not in get_args(TrainWindows):
        raise ValueError(f"train_windows must be one of {', '.join(map(repr, get_args(TrainWindows)))}, got {windows!r}")
    span = max_len + 1
    rows: list[np.ndarray] = []
    for seq in train[column].to_list():
        seq = np.asarray(seq, dtype=np.int64)
        if len(seq) < 2:
            continue
        if windows == "last":
            rows.append(seq[-span:])
            continue
        end = len(seq)
        while end >= 2:
            rows.append(seq[max(0, end - span):end])
            end -= max_len  # windows share one item, so every transition is trained exactly once
    if not rows:
        return torch.zeros((0, span), dtype=torch.int64)
    return left_pad(rows, span)


class TensorRows(Dataset):
    """Rows of pre-built tensors, fetched a whole batch at a time (`__getitems__`)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of different lengths: { {k: len(t) for k, t in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: t[index] for k, t in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: t[idx] for k, t in self.tensors.items()}


def pass_through(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn for TensorRows: the batch is already stacked."""
    return batch


def trim_padding(windows: torch.Tensor, keep: int = 1, times: torch.Tensor | None = None) -> torch.Tensor:
    """Drop leading columns that are padding in every row (left padding), keeping at least `keep` columns:
    a batch of short histories then costs its own length, not max_len. With `times`, those columns of
    `times` (aligned with `windows`) are returned instead."""
    real_columns = (windows != schema.PADDING_IDX).any(dim=0).nonzero()
    start = int(real_columns[0]) if len(real_columns) else windows.shape[1] - keep
    return (windows if times is None else times)[:, min(start, windows.shape[1] - keep):]


def shift_batch(windows: torch.Tensor, times: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Next-item objective: input = items[:-1], target = items[1:] (0 where there is nothing to predict).
    All-padding leading columns are trimmed. With the windows' timestamps, also input_times = times[:-1]
    and query_times = times[1:] (0 where there is no target)."""
    trimmed = trim_padding(windows, keep=2)
    inputs = trimmed[:, :-1]
    targets = trimmed[:, 1:].clone()
    targets[inputs == schema.PADDING_IDX] = schema.PADDING_IDX
    batch = {"input": inputs, "target": targets}
    if times is not None:
        times = trim_padding(windows, keep=2, times=times)
        batch["input_times"] = times[:, :-1]
        batch["query_times"] = torch.where(targets > 0, times[:, 1:], torch.zeros_like(times[:, 1:]))
    return batch


def last_target_batch(windows: torch.Tensor, times: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Next-item objective at the last position only: `shift_batch` with every other target cleared. For
    models that encode a history as a whole (recformer_full), where a state per prefix would cost one
    encoding per prefix."""
    batch = shift_batch(windows, times)
    batch["target"][:, :-1] = schema.PADDING_IDX
    if times is not None:
        batch["query_times"][:, :-1] = 0
    return batch


def mask_batch(
    windows: torch.Tensor,
    mask_token: int,
    mask_prob: float,
    generator: torch.Generator | None = None,
    last_item_mask_prob: float = 0.0,
    times: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Cloze objective (BERT4Rec): hide each real item with probability `mask_prob` and predict it.

    The window's last `max_len` items are used (the extra leading item of a shift window is dropped).
    Every window gets at least one masked item, so no row is wasted. A share `last_item_mask_prob` of the
    windows instead has only its last item masked: the BERT4Rec paper's extra samples (Sec. 3.5), which
    match the task at inference, where a [MASK] follows the history. At 0 nothing more is drawn, so masks
    are the same as before the option existed. With the windows' timestamps, `input_times` are the items'
    own, hidden ones included (when a hidden item happened is part of the question, as its position is).
    """
    items = trim_padding(windows[:, 1:]).clone()
    real = items != schema.PADDING_IDX
    draw = torch.rand(items.shape, generator=generator) < mask_prob
    masked = draw & real
    if last_item_mask_prob > 0.0:
        last_only = torch.rand(items.shape[0], generator=generator) < last_item_mask_prob  # [batch]
        masked[last_only] = False  # their last item is masked just below, as for rows left empty
    # Rows the draw left empty: mask their last real item (the position inference asks about).
    empty = ~masked.any(dim=1) & real.any(dim=1)
    masked[empty, -1] = True
    targets = torch.where(masked, items, torch.zeros_like(items))
    items[masked] = mask_token
    batch = {"input": items, "target": targets}
    if times is not None:
        batch["input_times"] = trim_padding(windows[:, 1:], times=times[:, 1:])
    return batch


class EvaluationRows(Dataset):
    """Valid/test rows as batches: `history` `[b, max_len]` (left-padded model input), `target` `[b]`,
    `user_idx` `[b]`, and `seen` `[b, longest]`: the user's whole history (not cut to max_len, 0-padded),
    which the evaluator excludes from the ranking. Histories are kept flat (CSR) so that a few users with
    thousands of items do not blow up memory for everyone. With `with_timestamps`, also `history_times`
    `[b, max_len]` and `target_time` `[b]`."""

    def __init__(self, frame: pl.DataFrame, max_len: int, with_timestamps: bool = False) -> None:
        histories = frame[schema.HISTORY]
        self.history = left_pad(histories, max_len)
        self.times: dict[str, torch.Tensor] = {}
        if with_timestamps:
            self.times = {"history_times": left_pad(frame[schema.HISTORY_TIMESTAMPS], max_len),
                          "target_time": torch.from_numpy(frame[schema.TARGET_TIMESTAMP].to_numpy().astype(np.int64))}
        self.target = torch.from_numpy(frame[schema.TARGET].to_numpy().astype(np.int64))
        self.user_idx = torch.from_numpy(frame[schema.USER_IDX].to_numpy().astype(np.int64))
        lengths = histories.list.len().to_numpy().astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        # explode() turns an empty list into one null: drop those so offsets stay aligned
        flat = histories.explode().drop_nulls().to_numpy().astype(np.int64)
        self.seen_flat = torch.from_numpy(flat)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        starts, ends = self.offsets[indices], self.offsets[np.asarray(indices) + 1]
        longest = int((ends - starts).max()) if len(indices) else 0
        seen = torch.zeros((len(indices), max(longest, 1)), dtype=torch.long)
        for row, (start, end) in enumerate(zip(starts, ends)):
            seen[row, : end - start] = self.seen_flat[start:end]
        return {"history": self.history[idx], "target": self.target[idx], "user_idx": self.user_idx[idx],
                "seen": seen, **{name: values[idx] for name, values in self.times.items()}}
