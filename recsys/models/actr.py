"""ACT-R memory: how available an item is in a user's memory, from when they used it.

After ACT-R's declarative memory (Anderson et al., "An integrated theory of the mind", Psychological
Review 2004), as the PISA model uses it for repeat-aware listening-session recommendation (Tran et al.,
"Transformers Meet ACT-R: Repeat-Aware and Sequential Listening Session Recommendation", RecSys 2024).
For each item i of a history, asked at time t_now (the `at` of the request, else the last interaction's
time):

    base level   B_i = ln sum_j (age_j + offset)^(-d)      age_j = (t_now - t_j) / time_unit_s, over i's uses j
    spreading    S_i = ln(1 + c_i)                         c_i = uses of i together with the recent basket
    activation   A_i = B_i + spreading_weight * S_i

Each use adds to an item's activation and every one decays as a power of its age: base-level learning.
`offset` (in time units) keeps a use at t_now finite (an item in the basket being filled has age 0); with
offset 0 it is the textbook formula (then ages must be > 0). The spreading term is the simple form of
associative activation: c_i counts the history positions of item i that share a basket (one timestamp)
with an item of the most recent basket, other than itself, so items bought together with what the user
just bought come forward. Time is in the timeline's units: seconds, so time_unit_s 86400 counts days
(basket logs: recsys.data.baskets). Without timestamps each position is one unit of time.

As a model (`actr`) it is "memory only": history items rank by activation (their total score is
1 + exp(A_i), above 1), every other item after them by training popularity in [0, 1), the same
fallback and contract as the repeat baselines (recsys.models.repeat_baselines): the memory score is not
an inner product, so it is the `history_scores` term, re-ranked on top of FAISS's best new items.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from recsys.config import PositiveFloat
from recsys.models.repeat_baselines import RepeatBaselineConfig, _HistoryBaseline

EVAL_CHUNK = 64
"""Users per chunk of the [chunk, seq_len, seq_len] pairwise tensors (64 x 500 x 500 floats: 64 MB)."""


class ACTRConfig(RepeatBaselineConfig):
    """ACT-R base-level activation plus spreading, over the most recent max_len items of a history."""

    decay: Annotated[float, Field(ge=0)] = 0.5
    """d, how fast a use fades: ACT-R's customary 0.5 (Anderson et al. 2004); 0 counts uses without decay."""
    time_unit_s: PositiveFloat = 86_400.0
    """Seconds per unit of age (86400: ages in days, as the basket timelines count)."""
    offset: Annotated[float, Field(ge=0)] = 1.0
    """Added to every age, in time units, so that a use at the query time stays finite (0: the bare formula)."""
    spreading_weight: Annotated[float, Field(ge=0)] = 1.0
    """Weight of the spreading term S_i (0: base level alone)."""


def base_level(items: Tensor, times: Tensor, now: Tensor, decay: float, offset: float) -> Tensor:
    """B per position [batch, seq_len]: ln of the sum over every position of the same item of
    (now - time + offset)^(-decay); times and now in time units; 0 at padding."""
    real = items > 0
    age = (now.unsqueeze(1) - times).clamp(min=0.0) + offset  # [batch, seq_len]
    strength = torch.where(real, age.pow(-decay), torch.zeros_like(age))
    same = (items.unsqueeze(2) == items.unsqueeze(1)) & real.unsqueeze(1)  # [batch, L, L]: position k is item of j
    total = (same.to(strength.dtype) * strength.unsqueeze(1)).sum(dim=2)  # [batch, seq_len]
    return torch.where(real, total.clamp(min=torch.finfo(total.dtype).tiny).log(), torch.zeros_like(total))


def spreading(items: Tensor, times: Tensor) -> Tensor:
    """S per position [batch, seq_len]: ln(1 + c) with c the positions of the same item that share a basket
    (a timestamp) with an item of the most recent basket other than themselves; 0 at padding."""
    real = items > 0
    last = times.masked_fill(~real, float("-inf")).amax(dim=1, keepdim=True)  # [batch, 1]
    recent = real & (times == last)  # [batch, L]: the last basket
    together = (times.unsqueeze(2) == times.unsqueeze(1)) & recent.unsqueeze(1)  # [batch, L, L]
    together &= items.unsqueeze(2) != items.unsqueeze(1)
    linked = (together.any(dim=2) & real).to(times.dtype)  # [batch, L]: position shares a basket with a recent item
    same = (items.unsqueeze(2) == items.unsqueeze(1)) & real.unsqueeze(1)
    count = (same.to(times.dtype) * linked.unsqueeze(1)).sum(dim=2)
    return torch.where(real, count.log1p(), torch.zeros_like(count))


class ACTR(_HistoryBaseline):
    """ACT-R memory alone: history items by activation, then the rest by popularity (see the module doc)."""

    config: ACTRConfig
    uses_timestamps = True

    def activation(self, items: Tensor, timestamps: Tensor | None = None, at: Tensor | None = None) -> Tensor:
        """A = B + spreading_weight * S per position, [batch, seq_len] (0 at padding)."""
        self.check_history(items, timestamps)
        items = items.long()
        cfg = self.config
        if timestamps is None:  # one unit of time per position
            times = torch.arange(items.shape[1], device=items.device, dtype=torch.float64).expand(items.shape[0], -1)
            now = times[:, -1]
        else:
            times = timestamps.to(torch.float64) / cfg.time_unit_s
            real_times = times.masked_fill(items == 0, float("-inf"))
            now = real_times.amax(dim=1) if at is None else at.to(torch.float64) / cfg.time_unit_s
            now = torch.where(torch.isfinite(now), now, torch.zeros_like(now))  # an all-padding history
        out = []
        for start in range(0, items.shape[0], EVAL_CHUNK):
            part = slice(start, start + EVAL_CHUNK)
            value = base_level(items[part], times[part], now[part], cfg.decay, cfg.offset)
            if cfg.spreading_weight:
                value = value + cfg.spreading_weight * spreading(items[part], times[part])
            out.append(value)
        return torch.cat(out).float()

    def history_scores(self, items: Tensor, timestamps: Tensor | None = None,
                       at: Tensor | None = None) -> Tensor:
        items = items.long()
        # exp(A) is positive and rises with A: every history item scores above 1, in activation order
        personal = 1.0 + self.activation(items, timestamps, at).exp()
        return torch.where(items > 0, personal - self.fallback[items], torch.zeros_like(personal))
