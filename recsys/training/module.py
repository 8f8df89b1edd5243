"""The one LightningModule every model trains with.

The model is a `recsys.models.base.SequenceModel`: this module calls `encode` for the states, scores them
against `item_vectors()` at the positions that have a target (the batches decide which: shift, mask or last),
and hands the timestamps a batch carries (`input_times`, `query_times`) to the model as they are.
Validation ranks the full catalogue for every validation user with the shared evaluator. With
`trainer.contrastive` (CL4SRec or MCLRec, `recsys.training.contrastive`) a contrastive loss between two
augmented views of each training history joins the next-item loss; MCLRec's alternating updates of the model
and its augmenters make that mode's optimisation manual (`_mclrec_step`).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from recsys.config import TrainerConfig
from recsys.errors import ConfigError
from recsys.evaluation.metrics import RankingAccumulator, repeat_targets
from recsys.evaluation.runner import query_time
from recsys.models.base import SequenceModel
from recsys.models.losses import LOSSES, HistoryLogits, LossConfig, PopularitySampler, compute_loss
from recsys.models.prior import interaction_counts, log_prior, with_bias_column, with_unit_column
from recsys.training.contrastive import Augmenter, ContrastiveViews

VAL_MONITOR = "val_ndcg@10"
LEFT_OUT_LOGIT = -1.0e4
"""Added to the logit of a history item under trainer.exclude_history_from_loss: exp(-1e4) is 0 in float32, and
unlike -inf it keeps sums and differences of logits finite."""


def log_popularity(sequences: list[list[int]], n_items: int) -> torch.Tensor:
    """log of each item's share of the training interactions, +1 smoothed: [n_items + 1] (row 0: padding, 0).
    The same prior `recsys index set-prior` gives a saved model, so one trained with it can be handed another
    catalogue's popularity in its place."""
    return log_prior(interaction_counts(sequences, n_items))


class RecommenderModule(L.LightningModule):
    def __init__(
        self,
        model: SequenceModel,
        n_items: int,
        loss: LossConfig | None,
        trainer_config: TrainerConfig,
        ks: tuple[int, ...] = (1, 5, 10, 20, 50),
        log_popularity: torch.Tensor | None = None,
        time_context: str = "none",
        exclude_seen: bool = True,
        negative_log_q: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.n_items = n_items
        self.loss = loss  # None: a model fitted without gradient steps (the popularity baseline)
        self.cfg = trainer_config
        self.ks = ks
        self.time_context = time_context  # when validation asks a time-aware model (evaluation.time_context)
        self.exclude_seen = exclude_seen  # evaluation.exclude_seen: whether validation ranks the history too
        self._val: RankingAccumulator | None = None
        # > 0 once training has reached its cool-down (trainer.cooldown_epochs): the next fit anneals the rate.
        self.cooldown_epochs = 0
        # [n_items + 1] added to the training logits (popularity_correction); None: plain logits.
        self.register_buffer("log_popularity", log_popularity, persistent=False)
        # [n_items + 1] log q(item) that loss.negatives 'popularity' draws sampled_ce's negatives by.
        self.register_buffer("negative_log_q", negative_log_q, persistent=False)
        self._init_contrastive()
        self._check_history_left_out()

    def _check_history_left_out(self) -> None:
        """trainer.exclude_history_from_loss needs what it acts on: the next-item objective, a softmax, no memory."""
        if not self.cfg.exclude_history_from_loss:
            return
        objective = self.model.objective()
        name = type(self.model).__name__
        if objective.batches != "shift" or self.loss is None or not LOSSES[self.loss.name].softmax:
            raise ConfigError(f"trainer.exclude_history_from_loss: needs a model trained on the next item with a "
                              f"softmax loss (ce, sampled_ce); {name} trains with {objective.batches!r} batches and "
                              f"loss {getattr(self.loss, 'name', None)!r}")
        if type(self.model).history_logits is not SequenceModel.history_logits:
            raise ConfigError(f"trainer.exclude_history_from_loss: {name} has its own memory term on history items; "
                              "its repeat bias is learnt instead")

    def _init_contrastive(self) -> None:
        """The contrastive option's parts; with trainer.contrastive 'none' nothing (no module, no random draw)."""
        self.contrastive = self.cfg.contrastive
        self._views: ContrastiveViews | None = None
        self._view_generator: torch.Generator | None = None
        self.augmenters: nn.ModuleList | None = None
        if self.contrastive.method == "none":
            return
        objective = self.model.objective()
        # The clean history of a "mask" batch is rebuilt from its targets (see _history); views are masked
        # with the model's own [MASK], or, for a model without one, by dropping items (data.augment.mask).
        self._mask_batches = objective.batches == "mask"
        self._views = ContrastiveViews(self.contrastive, objective.mask_token if self._mask_batches else 0)
        if self.contrastive.method == "mclrec":
            dim = int(self.model.item_vectors().shape[1])  # user vectors live in the item vectors' space
            self.augmenters = nn.ModuleList(Augmenter(dim, self.contrastive.augmenter_hidden) for _ in range(2))
            # Two optimisers stepping in turn on one batch: Lightning leaves that to the module.
            self.automatic_optimization = False

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Full-catalogue next-item scores `[batch, n_items + 1]` for left-padded histories."""
        return self.model.score(items, timestamps)

    # -- training -------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # Dropout, negatives and masks draw from the global RNG. Reseeding it per epoch makes each epoch a
        # function of (seed, epoch) alone, so a run resumed from a checkpoint continues exactly as the
        # uninterrupted run would have (checkpoints do not carry RNG states).
        torch.manual_seed(self.cfg.seed * 100_003 + self.current_epoch + 1_000_000 * self.global_rank)
        # Models whose item vectors are a cache of an encoder being trained (Recformer's full mode) re-encode
        # them between epochs, as Recformer's two-stage fine-tuning does; within an epoch they stay fixed.
        self.model.refresh_item_cache()
        if self._views is not None:
            # Views draw from a generator of their own, seeded per (seed, epoch, process) like the global RNG
            # above: the same views whatever the dropout draws, the DataLoader workers or a resume do.
            self._view_generator = torch.Generator().manual_seed(
                (self.cfg.seed * 100_003 + self.current_epoch + 1_000_000 * self.global_rank) ^ 0x5EED_C0DE)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if self.augmenters is not None:
            self._mclrec_step(batch)
            return None
        shares = self._shares_of_global_batch(batch)
        if shares is not None and not bool((batch["target"] > 0).any()):
            return self._zero_loss()  # this process's slice of a short last batch is empty (GlobalBatchShard)
        loss = self._next_item_loss(batch)
        if shares is not None:
            loss = loss * shares[0].to(loss.dtype)
        if self._views is not None:
            contrastive = self._views.cl4srec_loss(*self._view_vectors(batch))
            self._log_train("train_contrastive_loss", contrastive, batch)
            loss = loss + self.contrastive.weight * contrastive * (1.0 if shares is None else shares[1].to(loss.dtype))
        return loss

    def _shares_of_global_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """In a multi-process fit: world_size x this process's share of the global batch's targets and of its
        sequences, [2]. Losses are means over this process's part; DDP (and FSDP) average the processes'
        gradients, so each process's mean is weighted by its share to make the average the gradient of the
        mean over the whole global batch, exactly what one process computes from the same batch (a mean of
        per-process means would weigh a process with few targets as much as one with many). None in a
        single-process fit, whose loss is left exactly as it was."""
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        local = torch.tensor([float((batch["target"] > 0).sum()), float(batch["input"].shape[0])],
                             dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(local.clone(), reduce_op="sum")
        return local * self.trainer.world_size / total.clamp(min=1.0)

    def _zero_loss(self) -> torch.Tensor:
        """0, with a gradient (of zeros) for every trainable parameter, so that this process still takes part
        in DDP's gradient all-reduce, adding nothing to it."""
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device))

    def _next_item_loss(self, batch: dict[str, torch.Tensor], log: bool = True) -> torch.Tensor:
        inputs, input_times, query_times = batch["input"], batch.get("input_times"), batch.get("query_times")
        states = self.model.encode(inputs, input_times, query_times)
        has_target = batch["target"] > 0  # [batch, seq_len]
        history = self._history_logits(inputs, input_times, query_times, states, batch["target"])
        # Only positions with a target reach the output layer: padded positions would cost a full
        # [positions, n_items] logit row each for nothing.
        hidden, items = states[has_target], self.model.item_vectors()
        if self.log_popularity is not None:
            # One more dimension, 1 on the state side and log popularity on the item side, adds log p(item) to
            # every logit without any loss knowing about it.
            hidden, items = with_unit_column(hidden), with_bias_column(items, self.log_popularity)
        if self.loss is None:
            raise ValueError(f"{type(self.model).__name__} has no loss to train with (its objective has none)")
        sampler = None if self.negative_log_q is None else PopularitySampler(self.negative_log_q)
        loss = compute_loss(self.loss, hidden, batch["target"][has_target], items, history=history,
                            sampler=sampler)
        if log:
            self._log_epoch_mean("train_loss", loss, int(has_target.sum()), prog_bar=True)
        return loss

    def _history_logits(self, inputs: torch.Tensor, input_times: torch.Tensor | None,
                        query_times: torch.Tensor | None, states: torch.Tensor,
                        targets: torch.Tensor) -> HistoryLogits | None:
        """A repeat-aware model's memory logits at the positions with a target (None for the others)."""
        has_target = targets > 0
        memory = self.model.history_logits(inputs, input_times, query_times, states)
        if memory is None:
            return self._history_left_out(inputs, targets) if self.cfg.exclude_history_from_loss else None
        values, applies = memory  # [batch, L, L] each
        # position t's history, id 0 (none) where the term does not apply: later items, earlier uses of an item
        ids = inputs.unsqueeze(1).expand(-1, inputs.shape[1], -1).masked_fill(~applies, 0)
        return HistoryLogits(ids[has_target], values[has_target])

    def _history_left_out(self, inputs: torch.Tensor, targets: torch.Tensor) -> HistoryLogits:
        """trainer.exclude_history_from_loss: a large negative logit on every item at or before each position,
        except where it is that position's target (a repeat stays learnable), at the positions with a target."""
        seq_len = inputs.shape[1]
        earlier = torch.ones(seq_len, seq_len, dtype=torch.bool, device=inputs.device).tril()  # [t, j]: j <= t
        has_target = targets > 0  # [batch, L]
        ids = inputs.unsqueeze(1).expand(-1, seq_len, -1).masked_fill(~earlier, 0)[has_target]  # [n, L]
        own = targets[has_target].unsqueeze(1)  # [n, 1]
        values = torch.full(ids.shape, LEFT_OUT_LOGIT, device=inputs.device).masked_fill(ids == own, 0.0)
        return HistoryLogits(ids, values)

    # -- contrastive self-supervision (trainer.contrastive) -------------------------------------------------
    def _history(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's histories as the data gave them: [batch, seq_len], left-padded."""
        if self._mask_batches:  # the targets hold the items that [MASK] hides
            return torch.where(batch["target"] > 0, batch["target"], batch["input"])
        return batch["input"]

    def _draw_views(self, batch: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        assert self._views is not None
        if self._view_generator is None:  # a step outside fit's epochs (a test calling training_step)
            self._view_generator = torch.Generator().manual_seed(self.cfg.seed)
        return self._views.draw(self._history(batch), batch.get("input_times"), self._view_generator)

    def _view_vectors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._views is not None
        return self._views.encode(self.model, self._draw_views(batch))

    def _log_train(self, name: str, value: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self._log_epoch_mean(name, value, int(batch["input"].shape[0]))

    def _log_epoch_mean(self, name: str, value: torch.Tensor, count: int, prog_bar: bool = False) -> None:
        """The epoch's mean of `value`, weighted by `count` over every step of every process (so a two-process
        epoch logs the loss one process logs). The weight is count x world_size: Lightning averages a mean's
        weights over the processes in an integer tensor (floor division under gloo), so 15805 targets over
        2 processes would count as 7902; multiplied by the world size they divide exactly, and the ratio of
        weighted sum to weights is unchanged."""
        world_size = self.trainer.world_size if self._trainer is not None else 1
        self.log(name, value, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=count * world_size,
                 sync_dist=True)

    def _mclrec_step(self, batch: dict[str, torch.Tensor]) -> None:
        """MCLRec's three updates on one batch (see training.contrastive): the model, the augmenters with the
        model fixed, the model again. The views are drawn once, so all three steps see the same ones (as the
        authors' precomputed views are), with fresh dropout each time."""
        assert self._views is not None and self.augmenters is not None
        model_optimizer, augmenter_optimizer = self.optimizers()  # type: ignore[misc]
        views = self._draw_views(batch)
        self._model_update(batch, views, model_optimizer, log=True)
        with torch.no_grad():
            h1, h2 = self._views.encode(self.model, views)
        self.augmenters.requires_grad_(True)
        augmenter_loss = self._views.mclrec_terms(h1, h2, self.augmenters)
        self._step(augmenter_optimizer, augmenter_loss)
        self._log_train("train_augmenter_loss", augmenter_loss, batch)
        self._model_update(batch, views, model_optimizer, log=False)
        schedulers = self.lr_schedulers()
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
            scheduler.step()  # type: ignore[union-attr]

    def _model_update(self, batch: dict[str, torch.Tensor], views: list[tuple[torch.Tensor, torch.Tensor | None]],
                      optimizer: torch.optim.Optimizer, log: bool) -> None:
        assert self._views is not None and self.augmenters is not None
        self.augmenters.requires_grad_(False)  # frozen: the model's step leaves them as they are
        cfg = self.contrastive
        next_item = self._next_item_loss(batch, log=log)
        h1, h2 = self._views.encode(self.model, views)
        contrastive = self._views.cl4srec_loss(h1, h2)
        loss = next_item + cfg.weight * contrastive + cfg.meta_weight * self._views.mclrec_terms(h1, h2, self.augmenters)
        self._step(optimizer, loss)
        if log:
            self._log_train("train_contrastive_loss", contrastive, batch)

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.cfg.grad_clip is not None:  # manual optimisation: Lightning's own clipping is off (train._trainer)
            self.clip_gradients(optimizer, gradient_clip_val=self.cfg.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    # -- validation -----------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = None
        self.model.refresh_item_cache()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        at = query_time(batch, self.time_context)
        scores = self.model.score(batch["history"], batch.get("history_times"), at).float()
        seen, target = batch["seen"], batch["target"]
        self._accumulator().update(scores, target, seen if self.exclude_seen else None, inplace=True,
                                   repeats=repeat_targets(seen, target))

    def on_validation_epoch_end(self) -> None:
        accumulator = self._accumulator()
        if self.trainer.world_size > 1:
            # Each process scored its own users (SequenceDataModule.val_dataloader): sums and counts are added
            # up over processes, so every process then holds the same exact means over all users.
            accumulator.all_reduce(self.device)
        for name, value in accumulator.compute().items():
            if name not in ("n_users", "n_repeat_users"):
                self.log(f"val_{name}", value, prog_bar=(name == "ndcg@10"), sync_dist=False)
        self._val = None

    def _accumulator(self) -> RankingAccumulator:
        if self._val is None:
            self._val = RankingAccumulator(self.n_items, self.ks)
        return self._val

    # -- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        main = self._model_optimizer()
        if self.augmenters is None:
            return main
        cfg = self.cfg
        augmenter_optimizer = torch.optim.AdamW(self.augmenters.parameters(), lr=cfg.contrastive.augmenter_lr or cfg.lr,
                                                betas=cfg.betas, weight_decay=cfg.weight_decay)
        return [main if isinstance(main, dict) else {"optimizer": main}, {"optimizer": augmenter_optimizer}]

    def _model_optimizer(self) -> Any:
        cfg = self.cfg
        parameters = self.model.parameters() if self.augmenters is not None else self.parameters()
        optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        if self.cooldown_epochs:
            scheduler = self._cooldown(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if cfg.warmup_steps == 0 and cfg.lr_decay == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = _lr_lambda(cfg.warmup_steps, total, cfg.lr_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _cooldown(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """lr falling linearly to zero over the cool-down's steps. Its step count starts at 0 in the fit that
        begins the cool-down (the checkpoint it starts from carries no scheduler) and is restored from
        last.ckpt when a run is resumed during it."""
        trainer = self.trainer
        steps_per_epoch = int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs)
        total = max(1, self.cooldown_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(0, total, "linear"))


def _lr_lambda(warmup: int, total: int, decay: str) -> Any:
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if decay == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if decay == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
