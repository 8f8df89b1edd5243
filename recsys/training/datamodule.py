"""The LightningDataModule shared by all models: training windows per objective, validation rows."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from recsys.data.batches import (
    EvaluationRows,
    TensorRows,
    Windows,
    mask_batch,
    pass_through,
    shift_batch,
    training_windows,
)
from recsys.data.dataset import Split

Objective = Literal["shift", "mask"]


class EpochShuffle(Sampler[int]):
    """A random order that depends only on (seed, epoch): a run resumed at epoch N shuffles epoch N
    exactly as the uninterrupted run did (a generator carried across epochs would not survive a restart).
    Lightning calls `set_epoch` before each epoch, as it does for DistributedSampler."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[no-untyped-def]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


class SequenceDataModule(L.LightningDataModule):
    """Serves one prepared split.

    The split is built before the module (preparation is cached and cheap to repeat on every process),
    so `setup` only turns frames into tensors.
    """

    def __init__(
        self,
        split: Split,
        max_len: int,
        objective: Objective = "shift",
        batch_size: int = 128,
        eval_batch_size: int = 512,
        windows: Windows = "last",
        mask_token: int = 0,
        mask_prob: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.split = split
        self.max_len = max_len
        self.objective = objective
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.windows = windows
        self.mask_token = mask_token
        self.mask_prob = mask_prob
        self.num_workers = num_workers
        self.seed = seed
        self._train: TensorRows | None = None
        self._valid: EvaluationRows | None = None
        self._test: EvaluationRows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            windows = training_windows(self.split.train, self.max_len, self.windows)
            self._train = TensorRows(windows=windows)
            self._valid = EvaluationRows(self.split.valid, self.max_len)
            self._test = EvaluationRows(self.split.test, self.max_len)

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
            sampler = EpochShuffle(len(self._train), self.seed)
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
        return self._evaluation_loader(self._test)

    def _evaluation_loader(self, rows: EvaluationRows | None) -> DataLoader:
        return DataLoader(rows, batch_size=self.eval_batch_size, shuffle=False, collate_fn=pass_through,
                          num_workers=0, generator=torch.Generator().manual_seed(self.seed))

    def _training_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        windows = batch["windows"]
        if self.objective == "shift":
            return shift_batch(windows)
        # The global RNG is seeded by seed_everything, so masks repeat run to run.
        return mask_batch(windows, self.mask_token, self.mask_prob)
