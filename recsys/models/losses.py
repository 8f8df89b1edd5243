"""Next-item training losses over a tied item table, shared by every sequence model.

Every loss takes the hidden states of only the positions that have a target, flattened
(`hidden` [n, dim]; padding already removed, so no [batch, seq_len, n_items] tensor is ever built),
their target item ids (`targets` [n], in 1..n_items) and the item table (`item_table` [n_items + 1, dim],
row 0 padding). The logit of item i at a position is `hidden @ item_table[i]`. Each returns a scalar: the
mean over the n positions.

- `full_ce`: softmax cross-entropy over the whole catalogue (BERT4Rec's loss; for SASRec: Klenitskiy &
  Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023). Exact, and
  memory-bounded on every device: the [n, n_items] logits are never held, only a chunk of rows of them
  (`FusedCrossEntropy`, sized by `cross_entropy_chunk` from a memory budget). `materialised_ce` is the
  plain reference that holds them all.
- `sampled_ce`: softmax over the target and N negatives shared by the batch (same paper, Sec. 3): uniform,
  or drawn by training popularity (`PopularitySampler`) with the logQ correction (Yi et al., "Sampling-Bias-
  Corrected Neural Modeling for Large Corpus Item Recommendations", RecSys 2019), which makes it a consistent
  estimate of the full softmax.
- `bce`: binary cross-entropy with one uniform negative per position (SASRec, Kang & McAuley, ICDM 2018).
- `gbce`: generalised BCE with k negatives per position (Petrov & Macdonald, "gSASRec: Reducing Overconfidence in Sequential
  Recommendation Trained with Negative Sampling", RecSys 2023).

Negatives are drawn uniformly from 1..n_items with replacement (or, for `sampled_ce` with a
`PopularitySampler`, by popularity), from `generator` when one is given (so a
seeded generator reproduces them) or else from torch's global RNG. A negative that happens to equal the
position's target is dropped (masked), never counted as a negative.

Repeat-aware models that train their memory term with the sequence model (`SequenceModel.history_logits`)
pass `history`: a `HistoryLogits` of extra logits on the items of each position's history, added to the
inner products before the softmax (only the softmax losses, `ce` and `sampled_ce`, take it). `sampled_ce`
then also ranks the target against each position's own history items (`loss.history_negatives`): those
are the terms of the full softmax that the memory makes largest, and uniform negatives almost never draw
them (on the Instacart sample, 4 of 256 would be history items), so without them the model learns that
history items rank high but hardly how to order them, which is what a repeat target needs.

`LOSSES` registers them by the name a config gives (`model.loss.name`); `LossConfig` is that config, the loss
and its options, defined once here for every model (`loss: ce`, or `loss: {name: sampled_ce, n_negatives: 512}`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pydantic import model_validator

from recsys.config import ConfigModel, FieldError, Positive, Probability


@dataclasses.dataclass(frozen=True)
class HistoryLogits:
    """Extra logits on a few items per position: at position r, item `ids[r, j]` gets `values[r, j]` added
    to its logit (ids [n, L] in 0..n_items, values [n, L]; an id 0 is padding and its value is ignored; an
    item listed twice in a row gets both values). Repeat-aware models give one value per distinct
    history item (`SequenceModel.history_logits`)."""

    ids: Tensor
    values: Tensor

    def __post_init__(self) -> None:
        if self.ids.shape != self.values.shape or self.ids.dim() != 2:
            raise ValueError(f"history ids and values must both be [n, L], got {tuple(self.ids.shape)} and "
                             f"{tuple(self.values.shape)}")

    def at(self, candidates: Tensor) -> Tensor:
        """The extra logit of each candidate: candidates [n, C] (or [C], the same for every row) -> [n, C].

        Shared candidates go through a slot table (item -> its column), so the cost is [n, L] + [n, C]
        whatever C; per-row ones go in chunks so that the [rows, L, C] comparison stays small."""
        n = self.ids.shape[0]
        shared = candidates.dim() == 1
        values = self.values.masked_fill(self.ids == 0, 0.0)
        if shared:
            return self._at_shared(candidates, values)
        out = []
        for start in range(0, n, HISTORY_CHUNK):
            ids, vals = self.ids[start:start + HISTORY_CHUNK], values[start:start + HISTORY_CHUNK]  # [c, L]
            cands = candidates if shared else candidates[start:start + HISTORY_CHUNK]
            match = ids.unsqueeze(2) == cands.view(1 if shared else cands.shape[0], 1, -1)  # [c, L, C]
            out.append((vals.unsqueeze(2) * match.to(vals.dtype)).sum(dim=1))
        return torch.cat(out) if out else values.new_zeros(0, candidates.shape[-1])

    def count(self, candidates: Tensor) -> Tensor:
        """How often each shared candidate [C] is among each row's history ids: [n, C]."""
        return self._at_shared(candidates, (self.ids > 0).to(torch.float32))

    def _at_shared(self, candidates: Tensor, values: Tensor) -> Tensor:
        """`at` for one candidate list [C] shared by every row: [n, C]. Sampled negatives may repeat an item,
        so values are summed per distinct candidate and then spread back to every column that holds it."""
        distinct, column = candidates.unique(return_inverse=True)  # [U], [C]
        size = int(max(int(distinct.max()) if distinct.numel() else 0, int(self.ids.max()) if self.ids.numel() else 0)) + 1
        slot = torch.full((size,), distinct.numel(), dtype=torch.long, device=candidates.device)  # U: no candidate
        slot[distinct] = torch.arange(distinct.numel(), device=candidates.device)
        where = slot[self.ids]  # [n, L]: each history item's candidate slot, U if it is not a candidate
        sums = values.new_zeros(self.ids.shape[0], distinct.numel() + 1).scatter_add_(1, where, values)  # [n, U + 1]
        return sums[:, column]


HISTORY_CHUNK = 256
"""Rows per chunk of `HistoryLogits.at` (256 x 50 history items x 257 candidates: 13 MB of floats)."""


def full_ce(hidden: Tensor, targets: Tensor, item_table: Tensor, history: HistoryLogits | None = None,
            chunk_mb: int | None = None) -> Tensor:
    """Softmax cross-entropy over all real items 1..n_items; the padding row never enters the softmax.

    Exact, on any device and in any float dtype (the softmax is taken in float32), without the [n, n_items]
    logits: a chunk of rows at a time (`cross_entropy_chunk`, `chunk_mb` the accelerator's budget for one
    chunk, default `CE_CHUNK_MB`). Scores against item_table[1:] (cheaper than masking column 0 of a full
    product) and shifts the targets down by one. `history` adds its extra logits first.
    """
    _check_inputs(hidden, targets, item_table)
    chunk = cross_entropy_chunk(item_table.shape[0] - 1, hidden.device, CE_CHUNK_MB if chunk_mb is None else chunk_mb)
    if history is not None:
        return FusedCrossEntropy.apply(hidden, item_table[1:], targets - 1, chunk, history.ids, history.values)
    if torch.is_grad_enabled() and (hidden.requires_grad or item_table.requires_grad):
        return FusedCrossEntropy.apply(hidden, item_table[1:], targets - 1, chunk)
    return chunked_cross_entropy_value(hidden, item_table[1:], targets - 1, chunk)


def materialised_ce(hidden: Tensor, targets: Tensor, item_table: Tensor,
                    history: HistoryLogits | None = None) -> Tensor:
    """`full_ce` the plain way: the whole [n, n_items] logit matrix, then F.cross_entropy. The reference the
    chunked path is tested against, and the baseline of benchmarks/large_catalogue.py; it needs about three
    [n, n_items] float tensors at once (logits, log-softmax, their gradient), which a large catalogue cannot
    afford (1M items x 25,600 positions: 100 GB each)."""
    _check_inputs(hidden, targets, item_table)
    logits = hidden @ item_table[1:].T  # [n, n_items]
    if history is not None:
        logits = add_history_logits(logits, history.ids, history.values)
    return F.cross_entropy(logits, targets - 1)


def add_history_logits(logits: Tensor, ids: Tensor, values: Tensor) -> Tensor:
    """logits [n, n_items] over items 1..n_items plus `values` [n, L] at columns `ids - 1` (ids 0: none)."""
    real = ids > 0
    return logits.scatter_add(1, (ids - 1).clamp(min=0), values.masked_fill(~real, 0.0).to(logits.dtype))


CE_CHUNK_MB = 1024
"""Default memory budget, in MB, for one chunk of `full_ce` on an accelerator (`model.loss.chunk_mb`)."""

CHUNK_BYTES_PER_LOGIT = 12
"""What one logit of a chunk costs at once: its float32 value, its float32 softmax probability (the
gradient is written over it) and a matmul's output in the input dtype, 4 bytes each."""


def cross_entropy_chunk(n_items: int, device: torch.device | str = "cpu", budget_mb: int = CE_CHUNK_MB) -> int:
    """Rows of logits per chunk of `full_ce`: as many as `budget_mb` holds (at least one row), and on the CPU
    also about 2 MB of them, so that a chunk's logits, softmax and gradient stay in the last-level cache.
    Measured on a 2-core AMD EPYC: 128-row chunks of 3,706 items ran the logit product 15% faster than
    282-row ones, and 1024-row ones 20% slower. An accelerator wants the opposite, chunks as large as the
    budget allows, so that each matmul keeps it busy."""
    budget_rows = max(1, (budget_mb << 20) // (max(n_items, 1) * CHUNK_BYTES_PER_LOGIT))
    if torch.device(device).type != "cpu":
        return budget_rows
    return min(budget_rows, max(32, min(1024, (1 << 19) // max(n_items, 1))))


def chunked_cross_entropy_value(hidden: Tensor, table: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """The mean cross-entropy of `hidden @ table.T` against `targets`, a chunk of rows at a time, with no
    gradient: what `FusedCrossEntropy` returns, for callers that do not train on it."""
    lse = torch.empty(hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32),
                      device=hidden.device)  # [n]
    for start in range(0, hidden.shape[0], chunk):
        lse[start:start + chunk] = torch.logsumexp(at_least_float32(hidden[start:start + chunk] @ table.T), dim=1)
    target_logits = at_least_float32((hidden * table[targets]).sum(dim=1))  # [n]
    return (lse - target_logits).mean()


def at_least_float32(values: Tensor) -> Tensor:
    """`values` in float32 if they are in a narrower float (bf16, fp16), else as they are: softmax sums over
    a large catalogue need float32's precision."""
    return values if torch.finfo(values.dtype).bits >= 32 else values.float()


TINY_PROBABILITY = 1e-30
"""Below this a float32 softmax probability has lost its precision (1.2e-38 is float32's smallest normal)."""


class FusedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of `hidden @ table.T` against `targets`, with its gradients computed in
    the same pass as the loss. The loss is linear in the incoming gradient, so the forward pass computes
    d loss / d hidden and d loss / d table for a gradient of 1 and the backward pass only scales them.
    Rows go through in chunks of `chunk` and the [n, n_items] logit matrix is never held: each chunk's
    logits are computed once, turned into a softmax in place and used for both gradients. What it holds
    beyond one chunk is what any backward pass needs anyway: a gradient the size of `hidden` and one the
    size of `table`, computed ahead.

    Against an autograd function that recomputes the logits in its backward pass (what Cut Cross-Entropy,
    Wijmans et al. 2025, does, to save memory the same way) this saves one of the four [n, n_items] products
    and one exponential pass, and against plain CE (three products) it adds none, so on a GPU too it costs
    no more arithmetic than the materialised loss. The softmax and the loss are taken in float32 whatever
    the input dtype (bf16 logits of a million items would lose the target's probability); the gradients
    are then formed in the table's dtype. Values and gradients equal F.cross_entropy's on materialised
    logits up to float rounding (tested, on the CPU and, where one is present, on CUDA). Only for losses
    that are backpropagated: `chunked_cross_entropy_value` otherwise.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, table: Tensor, targets: Tensor, chunk: int,
                history_ids: Tensor | None = None, history_values: Tensor | None = None) -> Tensor:
        n = hidden.shape[0]
        loss = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        grad_hidden = torch.empty_like(hidden)  # [n, d]
        grad_table = torch.zeros_like(table)  # [n_items, d]
        # HistoryLogits: a value's gradient is its item's logit gradient (the logit is a sum of values)
        grad_values = None if history_values is None else torch.zeros_like(history_values)  # [n, L]
        for start in range(0, n, chunk):
            rows, wanted = hidden[start:start + chunk], targets[start:start + chunk]  # [c, d], [c]
            logits = at_least_float32(rows @ table.T)  # [c, n_items]
            if history_ids is not None:
                ids = history_ids[start:start + chunk]
                columns = (ids - 1).clamp(min=0)  # [c, L]
                logits = add_history_logits(logits, ids, history_values[start:start + chunk].detach())
            picked = torch.arange(rows.shape[0], device=rows.device)
            # torch's softmax kernel makes one pass over each row where logsumexp-then-exp makes five (2.7x
            # faster here); the loss then comes from the target's probability, -log p = lse - logit.
            probs = torch.softmax(logits, dim=1)  # [c, n_items], float32 (or float64)
            target_probs = probs[picked, wanted]  # [c]
            row_loss = -torch.log(target_probs)
            # Its log is inexact or -inf: count it exactly. (On an accelerator the test waits for the chunk;
            # against the chunk's three matmuls that pause is noise.)
            underflow = target_probs < TINY_PROBABILITY
            if underflow.any():
                exact = torch.logsumexp(logits[underflow], dim=1) - logits[picked, wanted][underflow]
                row_loss[underflow] = exact
            loss += row_loss.sum()
            probs[picked, wanted] -= 1.0  # d loss_row / d logits
            coefficients = probs if probs.dtype == table.dtype else probs.to(table.dtype)
            grad_hidden[start:start + chunk] = coefficients @ table
            grad_table.addmm_(coefficients.T, rows.to(table.dtype))
            if grad_values is not None:
                grad_values[start:start + chunk] = probs.gather(1, columns).masked_fill(ids == 0, 0.0)
        ctx.save_for_backward(grad_hidden, grad_table, *(() if grad_values is None else (grad_values,)))
        ctx.n = n
        return loss / n

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_table, *grad_values = ctx.saved_tensors
        scale = grad / ctx.n
        values = grad_values[0] * scale.to(grad_values[0].dtype) if grad_values else None
        return (grad_hidden * scale.to(grad_hidden.dtype), grad_table * scale.to(grad_table.dtype), None, None,
                None, values)


@dataclasses.dataclass(frozen=True)
class PopularitySampler:
    """Negatives drawn with replacement in proportion to training popularity, and the log-probability
    log q(item) of each draw that the logQ correction subtracts (`sampled_ce`). `log_q` [n_items + 1] is
    the add-one-smoothed log share of each item in the training interactions (`recsys.models.prior.log_prior`,
    what `RecommenderModule` is given), so an item never seen in training is still drawn now and then;
    entry 0 (padding) is never drawn."""

    log_q: Tensor

    def __post_init__(self) -> None:
        if self.log_q.dim() != 1 or self.log_q.shape[0] < 2:
            raise ValueError(f"log_q must be [n_items + 1] with n_items >= 1, got {tuple(self.log_q.shape)}")

    def sample(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """n item ids in 1..n_items, each drawn with probability q(item), on `device`."""
        draw_on = generator.device if generator is not None else self.log_q.device
        probs = self.log_q.to(draw_on).exp()
        probs[0] = 0.0  # padding: never a negative (its entry of log_q is a placeholder)
        return torch.multinomial(probs, n, replacement=True, generator=generator).to(device, non_blocking=True)


def sampled_ce(
    hidden: Tensor,
    targets: Tensor,
    item_table: Tensor,
    n_negatives: int,
    generator: torch.Generator | None = None,
    negatives: Tensor | None = None,
    history: HistoryLogits | None = None,
    history_negatives: bool = True,
    sampler: PopularitySampler | None = None,
    logq_correction: bool = True,
) -> Tensor:
    """Softmax cross-entropy over the target and `n_negatives` negatives shared by every position: uniform,
    or drawn by `sampler` (popularity).

    Sharing the negatives makes the negative logits one [n, N] matmul instead of gathering N vectors per
    position. A negative equal to a position's target gets logit -inf at that position, so the target is
    never its own negative. `negatives` ([N] item ids) overrides the sampling, e.g. for tests. `history`
    adds its extra logits to the target's and the negatives'; with `history_negatives`, each position's
    history items (ids > 0, each distinct, as HistoryLogits holds them) are negatives too, every item
    counted once (a shared negative that is also in the position's history is masked there).

    With a `sampler` and `logq_correction`, each negative's logit is lowered by log(N q(item)), its expected
    count in the sample (Yi et al. 2019; Bengio & Senecal 2008): then sum_j exp(s_j - log(N q_j)) is an
    unbiased estimate of the softmax's sum over the other items, so the loss and its gradient approach full
    CE's as N grows (tested). Without the correction popular items, drawn often, are pushed down too hard.
    Uniform negatives are the paper's sampled CE as it is, uncorrected. A position's own history items (with
    `history_negatives`) are not a sample: they are never corrected.
    """
    _check_inputs(hidden, targets, item_table)
    if negatives is None:
        negatives = (sampler.sample(n_negatives, item_table.device, generator) if sampler is not None else
                     sample_items(item_table.shape[0] - 1, (n_negatives,), item_table.device, generator))
    pos_logits = (hidden * item_table[targets]).sum(-1, keepdim=True)  # [n, 1]
    neg_logits = hidden @ item_table[negatives].T  # [n, N]
    if sampler is not None and logq_correction:
        expected_count = sampler.log_q.to(negatives.device)[negatives] + math.log(negatives.shape[0])  # [N]
        neg_logits = neg_logits - expected_count.to(neg_logits.dtype)
    hits = negatives.unsqueeze(0) == targets.unsqueeze(1)  # [n, N]
    columns = [pos_logits, neg_logits]
    if history is not None:
        columns[0] = pos_logits + history.at(targets.unsqueeze(1)).to(pos_logits.dtype)
        columns[1] = neg_logits + history.at(negatives).to(neg_logits.dtype)
        if history_negatives:
            hits = hits | (history.count(negatives) > 0)  # counted once, in the history columns below
            own = per_position_logits(hidden, item_table, history.ids) + history.values.to(hidden.dtype)  # [n, L]
            none = (history.ids == 0) | (history.ids == targets.unsqueeze(1))
            columns.append(own.masked_fill(none, float("-inf")))
    columns[1] = columns[1].masked_fill(hits, float("-inf"))
    logits = torch.cat(columns, dim=1)  # [n, 1 + N (+ L)]; the target is class 0
    return F.cross_entropy(logits, torch.zeros_like(targets))


def bce(
    hidden: Tensor,
    targets: Tensor,
    item_table: Tensor,
    generator: torch.Generator | None = None,
    negatives: Tensor | None = None,
) -> Tensor:
    """SASRec's loss: mean over positions of -log sigmoid(s+) - log(1 - sigmoid(s-)), one negative each.

    s+ is the target's logit and s- that of a uniform negative drawn per position (the paper draws it from
    items outside the user's sequence; here it is uniform, with a hit of the target itself dropped).
    The two terms are summed, as in the reference code. `negatives` ([n] item ids) overrides the sampling.
    """
    _check_inputs(hidden, targets, item_table)
    if negatives is None:
        negatives = sample_items(item_table.shape[0] - 1, (targets.shape[0],), item_table.device, generator)
    pos_logits = (hidden * item_table[targets]).sum(-1)  # [n]
    neg_logits = per_position_logits(hidden, item_table, negatives.unsqueeze(1)).squeeze(1)  # [n]
    keep = (negatives != targets).to(neg_logits.dtype)  # [n]
    # -log sigmoid(s) = softplus(-s) and -log(1 - sigmoid(s)) = softplus(s), without overflow.
    return (F.softplus(-pos_logits) + keep * F.softplus(neg_logits)).mean()


def gbce_beta(n_negatives: int, n_items: int, t: float) -> float:
    """gSASRec's beta = alpha * (t * (1 - 1/alpha) + 1/alpha), alpha = k / (n_items - 1) (Petrov & Macdonald).

    Algebraically beta = 1 - t * (1 - alpha): t = 0 gives beta = 1 (plain BCE), t = 1 gives beta = alpha.
    alpha is the sampling rate of negatives; with k >= n_items - 1 the sample covers the catalogue, so it is
    capped at 1 (beta = 1: nothing to correct).
    """
    if n_items < 2:
        raise ValueError(f"gBCE needs at least 2 items, got n_items={n_items}")
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be at least 1, got {n_negatives}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gbce t must be in [0, 1], got {t}")
    alpha = min(n_negatives / (n_items - 1), 1.0)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce(
    hidden: Tensor,
    targets: Tensor,
    item_table: Tensor,
    n_negatives: int,
    t: float,
    generator: torch.Generator | None = None,
    negatives: Tensor | None = None,
) -> Tensor:
    """Generalised BCE (gSASRec, Petrov & Macdonald, RecSys 2023) with k = n_negatives negatives per position.

    Per position:  L = -1/(k+1) * [ log(sigmoid(s+)^beta) + sum_{j=1..k} log(1 - sigmoid(s_j)) ],
    with beta from `gbce_beta`. Raising the positive probability to the power beta < 1 counters the
    overconfidence that training on a small sample of negatives induces; log(sigmoid(s)^beta) is computed
    as -beta * softplus(-s), which is the same value as the reference's transformed logit
    log(1 / (sigmoid(s)^-beta - 1)) fed to BCE, without its clamps. The 1/(k+1) mean over the terms follows
    the reference code (asash/gSASRec-pytorch). At t = 0, beta = 1 and this is BCE with k negatives averaged
    over k + 1 terms: with k = 1 and the same negatives, exactly half of `bce`.

    Each position draws its own k negatives, as the paper does. Unlike softmax, a sigmoid loss with
    negatives shared by the batch pushes the same few items down in every context at once and learns far
    worse (measured on a toy task); `per_position_logits` keeps the cost at min(n_items, k * dim) per position.
    A negative equal to the position's target is dropped from its sum. `negatives` ([n, k] item ids)
    overrides the sampling.
    """
    _check_inputs(hidden, targets, item_table)
    n_items = item_table.shape[0] - 1
    if negatives is None:
        negatives = sample_items(n_items, (targets.shape[0], n_negatives), item_table.device, generator)
    if negatives.dim() != 2 or negatives.shape[0] != targets.shape[0]:
        raise ValueError(f"gbce negatives must be [n={targets.shape[0]}, k], got {tuple(negatives.shape)}")
    k = negatives.shape[1]
    beta = gbce_beta(k, n_items, t)
    pos_logits = (hidden * item_table[targets]).sum(-1)  # [n]
    neg_logits = per_position_logits(hidden, item_table, negatives)  # [n, k]
    keep = (negatives != targets.unsqueeze(1)).to(neg_logits.dtype)  # [n, k]
    per_position = beta * F.softplus(-pos_logits) + (keep * F.softplus(neg_logits)).sum(-1)  # [n]
    return per_position.mean() / (k + 1)


def per_position_logits(hidden: Tensor, item_table: Tensor, ids: Tensor) -> Tensor:
    """Logits of each position's own items: hidden [n, dim], ids [n, k] -> [n, k].

    Two equal ways, whichever moves less memory: gather k item vectors per position ([n, k, dim]), or, for a
    catalogue smaller than k * dim, score all items ([n, n_items + 1]) and pick k columns.
    """
    if item_table.shape[0] <= ids.shape[1] * hidden.shape[1]:
        return (hidden @ item_table.T).gather(1, ids)  # [n, n_items + 1] -> [n, k]
    return torch.einsum("nd,nkd->nk", hidden, item_table[ids])  # via [n, k, dim]


@dataclasses.dataclass(frozen=True)
class Loss:
    """A registered loss: how to compute it from a `LossConfig`, and whether it is a softmax over items."""

    compute: Callable[[Tensor, Tensor, Tensor, "LossConfig", "LossInputs"], Tensor]
    softmax: bool
    """A softmax over the target and other items (what BERT4Rec and Recformer train with), not a sigmoid per
    item; only these take `HistoryLogits`."""


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a loss may draw on beside the states, targets and item table: the generator its negatives come
    from (None: torch's global RNG), a repeat-aware model's history logits, and the popularity sampler
    `negatives: popularity` needs."""

    generator: torch.Generator | None = None
    history: HistoryLogits | None = None
    sampler: PopularitySampler | None = None


def _full_ce(hidden: Tensor, targets: Tensor, table: Tensor, loss: LossConfig, extra: LossInputs) -> Tensor:
    return full_ce(hidden, targets, table, extra.history, loss.chunk_mb)


def _sampled_ce(hidden: Tensor, targets: Tensor, table: Tensor, loss: LossConfig, extra: LossInputs) -> Tensor:
    sampler = None
    if loss.negatives == "popularity":
        if extra.sampler is None:
            raise ValueError("loss.negatives: popularity needs the training items' popularity; train through "
                             "RecommenderModule with negative_log_q, or pass a PopularitySampler")
        sampler = extra.sampler
    return sampled_ce(hidden, targets, table, loss.n_negatives, extra.generator, history=extra.history,
                      history_negatives=loss.history_negatives, sampler=sampler,
                      logq_correction=loss.logq_correction)


def _bce(hidden: Tensor, targets: Tensor, table: Tensor, loss: LossConfig, extra: LossInputs) -> Tensor:
    return bce(hidden, targets, table, extra.generator)


def _gbce(hidden: Tensor, targets: Tensor, table: Tensor, loss: LossConfig, extra: LossInputs) -> Tensor:
    return gbce(hidden, targets, table, loss.n_negatives, loss.gbce_t, extra.generator)


LOSSES: dict[str, Loss] = {
    "ce": Loss(_full_ce, softmax=True),
    "sampled_ce": Loss(_sampled_ce, softmax=True),
    "bce": Loss(_bce, softmax=False),
    "gbce": Loss(_gbce, softmax=False),
}
"""Loss name (as a config writes it) -> the loss. A config's choice of names is this table's keys."""

LossName = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
SoftmaxLossName = Literal[tuple(name for name, loss in LOSSES.items() if loss.softmax)]  # type: ignore[valid-type]


class LossConfig(ConfigModel):
    """The training loss and its options. Written as the name alone (`loss: ce`, `model.loss=bce`) or as a
    mapping (`loss: {name: sampled_ce, n_negatives: 512}`, `model.loss.n_negatives=512`)."""

    shorthand_key = "name"

    name: LossName = "ce"
    """'ce': full softmax over the catalogue ("SASRec+", Klenitskiy & Vasilev 2023), exact and memory-bounded
    on any device; 'sampled_ce': softmax over the target and n_negatives negatives; 'bce': the SASRec paper's
    binary cross-entropy, one negative per position; 'gbce': gSASRec's generalised BCE, n_negatives per
    position, calibrated by gbce_t."""
    n_negatives: Positive = 256
    """Negatives per step: 'sampled_ce' shares them across the batch, 'gbce' draws them per position
    ('bce' always draws 1 per position, 'ce' none)."""
    gbce_t: Probability = 0.75
    """gBCE calibration t in [0, 1]: 0 is plain BCE, 1 fully corrects the overconfidence negative sampling causes."""
    history_negatives: bool = True
    """Repeat-aware models ('sampled_ce' with a memory term, e.g. sasrec_actr): also rank the target against
    each position's own history items, not only the sampled negatives (see recsys.models.losses)."""
    negatives: Literal["uniform", "popularity"] = "uniform"
    """How 'sampled_ce' draws its negatives: 'uniform' over the catalogue, or 'popularity' in proportion to the
    training interactions (add-one smoothed), with logQ correction by default (the other losses draw uniformly)."""
    logq_correction: bool = True
    """With negatives 'popularity': lower each negative's logit by log(n_negatives * q(item)) (Yi et al. 2019), so
    that the sampled softmax estimates the full one; false trains on the popular negatives uncorrected."""
    chunk_mb: Positive = CE_CHUNK_MB
    """'ce' on an accelerator: the memory, in MB, one chunk of logits may take (the CPU takes cache-sized chunks
    within it). Larger chunks keep a GPU busier; the whole [positions, n_items] logit matrix is never held."""

    @model_validator(mode="after")
    def _popularity_negatives_are_sampled_ce(self) -> LossConfig:
        if self.negatives != "uniform" and self.name != "sampled_ce":
            raise FieldError("negatives", f"'{self.negatives}' is only for sampled_ce, got name: {self.name}")
        return self


class SoftmaxLossConfig(LossConfig):
    """A `LossConfig` limited to the softmax losses: for models that train only with those (BERT4Rec, Recformer)."""

    name: SoftmaxLossName = "ce"
    """'ce': full softmax over the catalogue; 'sampled_ce': softmax over the target and n_negatives negatives
    shared by the batch."""


def compute_loss(
    loss: LossConfig,
    hidden: Tensor,
    targets: Tensor,
    item_table: Tensor,
    generator: torch.Generator | None = None,
    history: HistoryLogits | None = None,
    sampler: PopularitySampler | None = None,
) -> Tensor:
    """The loss `loss` names, with its options: hidden [n, dim], targets [n], item_table [n_items + 1, dim];
    `history`: extra logits on history items (softmax losses only, ValueError otherwise); `sampler`: the
    popularity `loss.negatives: popularity` draws from."""
    entry = LOSSES[loss.name]
    if history is not None and not entry.softmax:
        raise ValueError(f"loss {loss.name!r} cannot add history logits; use a softmax loss (ce, sampled_ce)")
    return entry.compute(hidden, targets, item_table, loss, LossInputs(generator, history, sampler))


def sample_items(
    n_items: int, shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform item ids in 1..n_items (with replacement), of `shape`, on `device`.

    A generator can only draw on its own device, so the ids are drawn there and then moved.
    """
    if n_items < 1:
        raise ValueError(f"cannot sample negatives from an empty catalogue (n_items={n_items})")
    draw_on = generator.device if generator is not None else device
    ids = torch.randint(1, n_items + 1, shape, generator=generator, device=draw_on)
    return ids.to(device, non_blocking=True)


def _check_inputs(hidden: Tensor, targets: Tensor, item_table: Tensor) -> None:
    """Shapes always; target values only on the CPU, where the check costs no device synchronisation.

    On an accelerator an out-of-range target surfaces as the backend's own indexing error instead.
    """
    if hidden.dim() != 2 or item_table.dim() != 2 or hidden.shape[1] != item_table.shape[1]:
        raise ValueError(
            f"expected hidden [n, dim] and item_table [n_items + 1, dim], got {tuple(hidden.shape)} and "
            f"{tuple(item_table.shape)}"
        )
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"expected targets [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if hidden.shape[0] == 0:
        raise ValueError("no positions with a target: the loss of an empty batch is undefined")
    if targets.device.type == "cpu":
        n_items = item_table.shape[0] - 1
        low, high = int(targets.min()), int(targets.max())
        if low < 1 or high > n_items:
            raise ValueError(f"targets must be item ids in 1..{n_items}, got values in {low}..{high}")
