"""The LightningDataModule shared by all models: training windows per objective, validation rows.

In a multi-process run (trainer.devices > 1, trainer.num_nodes > 1) the processes split the work without a
DistributedSampler, whose padding repeats users and whose per-process shuffles give other batches than one
process would: every process draws the same global order of training windows (`EpochShuffle`, a function
of seed and epoch), cuts it into the same global batches of trainer.batch_size, and takes its own slice of each
(`GlobalBatchShard`), so the processes together train on exactly the batches one process would. Validation
users are split into contiguous, disjoint ranges, one per process, each user scored once; the module adds up
the sums and counts of all processes (`RankingAccumulator.all_reduce`).
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

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
from recsys.errors import ConfigError

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


class GlobalBatchShard(Sampler[list[int]]):
    """This process's slice of each global batch: the order `sampler` gives is cut into batches of
    `batch_size` (the last one shorter), as a DataLoader over one process cuts it, and process `rank` of
    `world_size` takes the rank-th of `world_size` contiguous parts (sizes differ by at most one). A global
    batch shorter than the number of processes leaves some processes an empty part: they step with a zero
    loss (module.RecommenderModule), so the gradient is still the global batch's. `sampler` is an attribute
    because Lightning calls `batch_sampler.sampler.set_epoch` before each epoch."""

    def __init__(self, sampler: EpochShuffle, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)  # every process steps once per global batch

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        for batch in order.split(self.batch_size):
            yield batch.tensor_split(self.world_size)[self.rank].tolist()


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
        # The trainer runs with use_distributed_sampler=False: the processes share the work here (module doc).
        assert self._train is not None
        lengths = (self._train.tensors["windows"] != 0).sum(dim=1) if self.bucket_by_length else None
        order = EpochShuffle(len(self._train), self.seed, lengths, self.batch_size)
        return DataLoader(
            self._train,
            batch_sampler=GlobalBatchShard(order, self.batch_size, *self._process()),
            # A loader without its own generator draws a seed from the global RNG each time an epoch
            # starts iterating, which would shift the dropout stream of a resumed run.
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=self._training_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        """This process's share of the validation users (all of them in a single-process fit)."""
        assert self._valid is not None
        rank, world_size = self._process()
        # A process without users would skip validation and leave the others waiting for its sums.
        if len(self._valid) < world_size:
            raise ConfigError(f"{len(self._valid)} validation users cannot be shared by {world_size} processes "
                              "(each needs one): use fewer trainer.devices or trainer.num_nodes")
        share = torch.arange(len(self._valid)).tensor_split(world_size)[rank]
        return self._evaluation_loader(self._valid, range(int(share[0]), int(share[-1]) + 1))

    def test_dataloader(self) -> DataLoader:
        return self.all_users("test")

    def all_users(self, split: Literal["valid", "test"]) -> DataLoader:
        """Every user of the split, whatever the processes: the final metrics, scored by the first process."""
        self.setup()
        if split == "test" and self._test is None:
            # Built only when asked for: a validation-only run (recsys tune's trials) never touches the test rows.
            self._test = EvaluationRows(self.split.test, self.max_len, self.with_timestamps)
        rows = self._valid if split == "valid" else self._test
        assert rows is not None
        return self._evaluation_loader(rows, range(len(rows)))

    def _evaluation_loader(self, rows: EvaluationRows, users: range) -> DataLoader:
        return DataLoader(rows, batch_size=self.eval_batch_size, sampler=users, collate_fn=pass_through,
                          num_workers=0, generator=torch.Generator().manual_seed(self.seed))

    def _process(self) -> tuple[int, int]:
        """(global rank, number of processes) of the fit this module serves; (0, 1) outside a fit."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _training_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        windows, times = batch["windows"], batch.get("times")
        if self.objective == "shift":
            return shift_batch(windows, times)
        if self.objective == "last":
            return last_target_batch(windows, times)
        # The global RNG is seeded by seed_everything, so masks repeat run to run.
        return mask_batch(windows, self.mask_token, self.mask_prob,
                          last_item_mask_prob=self.last_item_mask_prob, times=times)
