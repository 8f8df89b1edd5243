"""The LightningDataModule shared by all models: training windows per objective, validation rows."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from recsys.config import TrainWindows
from recsys.data import schema
from recsys.data.batches import (
    EvaluationRows,
    TensorRows,
    last_target_batch,
    mask_batch,
    pass_through,
    shift_batch,
    training_windows,
)
from recsys.data.dataset import Split

Objective = Literal["shift", "mask", "last"]
BUCKET_BATCHES = 32  # batches per sorting chunk: enough to group lengths, few enough to stay random


class EpochShuffle(Sampler[int]):
    """A random order that depends only on (seed, epoch): a run resumed at epoch N shuffles epoch N
    exactly as the uninterrupted run did (a generator carried across epochs would not survive a restart).
    Lightning calls `set_epoch` before each epoch, as it does for DistributedSampler."""

    def __init__(self, n: int, seed: int, lengths: torch.Tensor | None = None, batch_size: int = 1) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.lengths = lengths
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.lengths is not None:
            order = self._bucketed(order, generator)
        return iter(order.tolist())

    def _bucketed(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Batches of similar length, in random order: within chunks of BUCKET_BATCHES random batches,
        windows are sorted by length and cut into batches, so a batch of short histories is trimmed to
        its longest one instead of being padded to max_len. Batch order is then shuffled."""
        assert self.lengths is not None
        chunk = self.batch_size * BUCKET_BATCHES
        batches: list[torch.Tensor] = []
        for start in range(0, self.n, chunk):
            part = order[start:start + chunk]
            part = part[torch.argsort(self.lengths[part], stable=True)]
            batches.extend(part.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return torch.cat([batches[i] for i in shuffled]) if batches else order


class SequenceDataModule(L.LightningDataModule):
    """Serves one prepared split.

    The split is built before the module (preparation is cached and cheap to repeat on every process),
    so `setup` only turns frames into tensors.
    """

    def __init__(
        self,
        split: Split,
        *,
        max_len: int,
        objective: Objective,
        batch_size: int,
        eval_batch_size: int,
        windows: TrainWindows,
        bucket_by_length: bool,
        mask_token: int,
        mask_prob: float,
        last_item_mask_prob: float,
        num_workers: int,
        seed: int,
        with_timestamps: bool,
    ) -> None:
        """Every value is given, none defaulted here: they come from the run's config (TrainerConfig, the
        model's config), which defines each default once."""
        super().__init__()
        self.split = split
        self.max_len = max_len
        self.objective = objective
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.windows = windows
        self.bucket_by_length = bucket_by_length
        self.mask_token = mask_token
        self.mask_prob = mask_prob
        self.last_item_mask_prob = last_item_mask_prob
        self.num_workers = num_workers
        self.seed = seed
        self.with_timestamps = with_timestamps  # the model reads time: batches carry the timestamps too
        self._train: TensorRows | None = None
        self._valid: EvaluationRows | None = None
        self._test: EvaluationRows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            windows = training_windows(self.split.train, self.max_len, self.windows)
            times = ({"times": training_windows(self.split.train, self.max_len, self.windows, schema.TIMESTAMPS)}
                     if self.with_timestamps else {})
            self._train = TensorRows(windows=windows, **times)
            self._valid = EvaluationRows(self.split.valid, self.max_len, self.with_timestamps)

    @property
    def n_train_windows(self) -> int:
        self.setup()
        assert self._train is not None
        return len(self._train)

    def train_dataloader(self) -> DataLoader:
        # The trainer runs with use_distributed_sampler=False (validation must see every user on every
        # process), so multi-process training shards its windows here.
        sampler: Sampler
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(self._train, shuffle=True, seed=self.seed)
        else:
            lengths = (self._train.tensors["windows"] != 0).sum(dim=1) if self.bucket_by_length else None
            sampler = EpochShuffle(len(self._train), self.seed, lengths, self.batch_size)
        return DataLoader(
            self._train,
            batch_size=self.batch_size,
            sampler=sampler,
            # A loader without its own generator draws a seed from the global RNG each time an epoch
            # starts iterating, which would shift the dropout stream of a resumed run.
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=self._training_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self._valid)

    def test_dataloader(self) -> DataLoader:
        # Built only when asked for: a validation-only run (recsys tune's trials) never touches the test rows.
        if self._test is None:
            self._test = EvaluationRows(self.split.test, self.max_len, self.with_timestamps)
        return self._evaluation_loader(self._test)

    def _evaluation_loader(self, rows: EvaluationRows | None) -> DataLoader:
        return DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False, collate_fn=pass_through,
                          num_workers=0, generator=torch.Generator().manual_seed(self.seed))

    def _training_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        windows, times = batch["windows"], batch.get("times")
        if self.objective == "shift":
            return shift_batch(windows, times)
        if self.objective == "last":
            return last_target_batch(windows, times)
        # The global RNG is seeded by seed_everything, so masks repeat run to run.
        return mask_batch(windows, self.mask_token, self.mask_prob,
                          last_item_mask_prob=self.last_item_mask_prob, times=times)
