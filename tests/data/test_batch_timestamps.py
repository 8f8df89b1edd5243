"""Timestamps travel with the items into training and evaluation batches: cut, padded and trimmed exactly
like them (recsys.data.batches), for models that read time; hand-checked values."""

from __future__ import annotations

import polars as pl
import torch

from recsys.config import TrainerConfig
from recsys.data import schema
from recsys.data.batches import (
    EvaluationRows,
    last_target_batch,
    mask_batch,
    shift_batch,
    training_windows,
)
from recsys.data.dataset import Split
from recsys.data.splits import leave_one_out
from recsys.training.datamodule import SequenceDataModule

TRAIN = pl.DataFrame({schema.USER_IDX: [1, 2], schema.ITEMS: [[5, 6, 7, 8, 9], [3, 4]],
                      schema.TIMESTAMPS: [[10, 20, 30, 40, 50], [100, 200]]},
                     schema={schema.USER_IDX: pl.Int32, schema.ITEMS: pl.List(pl.Int32),
                             schema.TIMESTAMPS: pl.List(pl.Int64)})


def test_timestamp_windows_are_cut_like_the_item_windows() -> None:
    for windows in ("last", "all"):
        items = training_windows(TRAIN, 3, windows)
        times = training_windows(TRAIN, 3, windows, schema.TIMESTAMPS)
        assert times.shape == items.shape
        assert torch.equal(times == 0, items == 0)  # padding in the same places
    # "all" with max_len 3: user 1 gives [6, 7, 8, 9] and [0, 0, 5, 6]; user 2 [0, 0, 3, 4]
    assert training_windows(TRAIN, 3, "all", schema.TIMESTAMPS).tolist() == [
        [20, 30, 40, 50], [0, 0, 10, 20], [0, 0, 100, 200]]


def test_shift_batch_gives_input_and_query_times() -> None:
    windows = torch.tensor([[0, 0, 3, 4], [6, 7, 8, 9]])
    times = torch.tensor([[0, 0, 100, 200], [20, 30, 40, 50]])
    batch = shift_batch(windows, times)
    assert batch["input"].tolist() == [[0, 0, 3], [6, 7, 8]]
    assert batch["input_times"].tolist() == [[0, 0, 100], [20, 30, 40]]
    # each position's query time is its target's timestamp; 0 where there is no target
    assert batch["target"].tolist() == [[0, 0, 4], [7, 8, 9]]
    assert batch["query_times"].tolist() == [[0, 0, 200], [30, 40, 50]]
    # without timestamps the batch is what it always was
    assert set(shift_batch(windows)) == {"input", "target"}


def test_padding_trimmed_from_times_as_from_items() -> None:
    windows = torch.tensor([[0, 0, 3, 4], [0, 7, 8, 9]])
    times = torch.tensor([[0, 0, 100, 200], [0, 30, 40, 50]])
    batch = shift_batch(windows, times)
    assert batch["input"].tolist() == [[0, 3], [7, 8]]  # the all-padding first column is dropped
    assert batch["input_times"].tolist() == [[0, 100], [30, 40]]
    last = last_target_batch(windows, times)
    assert last["query_times"].tolist() == [[0, 200], [0, 50]]  # only the last position asks


def test_mask_batch_keeps_every_items_own_time() -> None:
    windows = torch.tensor([[0, 0, 3, 4], [6, 7, 8, 9]])
    times = torch.tensor([[0, 0, 100, 200], [20, 30, 40, 50]])
    batch = mask_batch(windows, mask_token=99, mask_prob=0.5, generator=torch.Generator().manual_seed(0), times=times)
    assert batch["input_times"].tolist() == [[0, 100, 200], [30, 40, 50]]
    assert batch["input"].shape == batch["input_times"].shape


def test_evaluation_rows_carry_history_and_target_times() -> None:
    sequences = pl.DataFrame({schema.USER_IDX: [1], schema.ITEMS: [[5, 6, 7, 8]],
                              schema.TIMESTAMPS: [[10, 20, 30, 40]]},
                             schema={schema.USER_IDX: pl.Int32, schema.ITEMS: pl.List(pl.Int32),
                                     schema.TIMESTAMPS: pl.List(pl.Int64)})
    test = leave_one_out(sequences).test
    rows = EvaluationRows(test, max_len=4, with_timestamps=True)[0]
    assert rows["history"].tolist() == [[0, 5, 6, 7]] and rows["history_times"].tolist() == [[0, 10, 20, 30]]
    assert rows["target"].tolist() == [8] and rows["target_time"].tolist() == [40]
    assert "history_times" not in EvaluationRows(test, max_len=4)[0]


def test_datamodule_hands_times_over_only_when_asked() -> None:
    sequences = pl.DataFrame({schema.USER_IDX: [1, 2], schema.ITEMS: [[5, 6, 7, 8], [1, 2, 3]],
                              schema.TIMESTAMPS: [[10, 20, 30, 40], [1, 2, 3]]},
                             schema={schema.USER_IDX: pl.Int32, schema.ITEMS: pl.List(pl.Int32),
                                     schema.TIMESTAMPS: pl.List(pl.Int64)})
    split: Split = leave_one_out(sequences)
    for timed in (True, False):
        trainer = TrainerConfig(batch_size=8)  # the module takes every value from a config, defaulting none
        module = SequenceDataModule(
            split, max_len=4, objective="shift", batch_size=trainer.batch_size,
            eval_batch_size=trainer.eval_batch_size, windows=trainer.train_windows,
            bucket_by_length=trainer.bucket_by_length, mask_token=0, mask_prob=0.0, last_item_mask_prob=0.0,
            num_workers=trainer.num_workers, seed=trainer.seed, with_timestamps=timed)
        module.setup()
        batch = next(iter(module.train_dataloader()))
        assert ("input_times" in batch) == timed and ("query_times" in batch) == timed
        valid = next(iter(module.val_dataloader()))
        assert ("history_times" in valid) == timed
        if timed:
            assert batch["input_times"].shape == batch["input"].shape
            assert torch.equal(batch["input_times"] == 0, batch["input"] == 0)
