"""A learnt ACT-R memory term for a sequence model: what PISA adds to a transformer.

After PISA (Tran et al., "Transformers Meet ACT-R: Repeat-Aware and Sequential Listening Session
Recommendation", RecSys 2024): a sequence model says what comes next in general, and ACT-R's base-level
learning says how available each item the user already had is in their memory now (recsys.models.actr
has the formula and the memory-only model). `ACTRMemory` is that term as a part of a sequence model
(`sasrec_actr`, `hstu_actr`), trained end to end by the model's softmax over the whole catalogue (or a
sampled one):

    logit(i | t) = h_t . e_i                                    every item (the model's inner product)
                 + a(h_t) * B_i(t) + b(h_t)                     items already in the history up to t
                 + c(h_t) * [i used at the query time]          items of the basket being filled

    B_i(t) = ln sum_j (age_j(t) + offset)^(-d)                  over i's uses j at or before position t

with age_j(t) the time from use j to when position t's prediction is asked (in training, the target's
timestamp; at inference `at`, or the last interaction), in `time_unit_s` units. What is learnt, not set
by hand: the weight a >= 0 (softplus) and the repeat bias b, both linear in the user's state, so a user
whose history reads as "buys again" weighs memory more than one who explores (`gate: state`, or one pair
of scalars for everyone: `gate: global`); and the decay d itself (`learn_decay`, from `decay`). a starts
at softplus(0) = 0.69 and b at 0: training begins as the plain model plus a modest memory term.

c is the one term ACT-R does not have (`current_basket`): an item used at the very time the prediction is
asked for (age 0: an earlier item of the basket being filled, with basket timelines, recsys.data.baskets) has
the highest activation of all, yet in grocery baskets it is the one item that does not come next (an order
lists a product once); in a listening session it may be the likeliest. The model learns which, per user.

Serving: the memory term changes only the scores of history items, so it is the contract's
`history_scores`, re-ranked on top of FAISS's inner-product search (recsys.retrieval.recommender), and
`history_logits` is the same term at every training position. Where a target never repeats (MovieLens),
training can drive b down and memory out of the ranking of new items: it cannot hurt what it cannot
explain. ACT-R's spreading term (co-occurrence with the last basket) stays in the memory-only `actr` model.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recsys.config import ConfigModel, PositiveFloat

GATE_SCALE = 10.0
"""The gate's outputs (and the decay's softplus argument) are this times their parameters. Adam moves a
parameter by about the learning rate a step whatever its gradient, and the memory term must reach the size
of the inner products (units, not hundredths) within an epoch or two: measured on the Instacart sample, an
unscaled global gate had moved 0.24 after 11 epochs and memory had no say in the ranking."""


class ACTRMemoryConfig(ConfigModel):
    """The memory term's keys, shared by every sequence model that carries one (see the module docstring)."""

    decay: Annotated[float, Field(gt=0)] = 0.5
    """d, how fast a use fades (ACT-R's customary 0.5); the starting value when learn_decay is on."""
    learn_decay: bool = True
    """Fit d by gradient descent with the rest of the model (False: keep `decay`)."""
    time_unit_s: PositiveFloat = 86_400.0
    """Seconds per unit of age (86400: days). Histories without timestamps count one unit per position."""
    offset: PositiveFloat = 1.0
    """Added to every age, in time units, so that a use at the query time stays finite."""
    gate: Literal["state", "global"] = "state"
    """'state': the memory weight a, repeat bias b and basket bias c are linear in the user's state (learnt per
    user); 'global': learnt scalars for everyone."""
    current_basket: bool = True
    """Learn c, a bias for items already used at the query time (the basket being filled; see the module
    docstring). False: ACT-R's base level and the repeat bias alone."""


class ACTRMemory(nn.Module):
    """The learnt memory term of a sequence model whose states are `hidden` wide."""

    def __init__(self, hidden: int, config: ACTRMemoryConfig) -> None:
        super().__init__()
        self.config = config
        # [a_raw, b, c] from the state; zero weights: everyone starts with softplus(0), 0 and 0
        self.gate = nn.Linear(hidden, 3)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        if config.gate == "global":
            self.gate.weight.requires_grad_(False)
        raw_decay = torch.tensor(math.log(math.expm1(config.decay)) / GATE_SCALE)  # softplus(scale * raw) = decay
        if config.learn_decay:
            self.raw_decay = nn.Parameter(raw_decay)
        else:
            self.register_buffer("raw_decay", raw_decay)

    @property
    def decay(self) -> Tensor:
        """The current d (> 0)."""
        return F.softplus(self.raw_decay * GATE_SCALE)  # scaled like the gate, so that d can travel too

    def training_logits(self, items: Tensor, timestamps: Tensor | None, query_times: Tensor | None,
                        states: Tensor) -> tuple[Tensor, Tensor]:
        """The contract's `history_logits`, ([batch, L, L] values, where they apply): at position t,
        a(h_t) * B + b(h_t) on the last use (at or before t) of each history item, 0 elsewhere (each
        distinct item counted once, as recsys.models.losses.HistoryLogits wants)."""
        items = items.long()
        times = self._times(items, timestamps)  # [batch, L] in time units
        if query_times is None:
            asked = times
        else:  # positions without a target have query time 0: ask them at their own time
            asked = torch.where(query_times > 0, query_times.to(times.dtype) / self.config.time_unit_s, times)
        positions = torch.arange(items.shape[1], device=items.device)
        base, now = self._base_level(items, times, asked, positions)  # [batch, L(t), L(j)] each
        real = items > 0
        later = torch.triu(torch.ones(items.shape[1], items.shape[1], dtype=torch.bool, device=items.device), 1)
        same = (items.unsqueeze(2) == items.unsqueeze(1)) & real.unsqueeze(1)  # [batch, j, k]
        # next use of j's item after j (L if none): j is the last use up to t while t < next use
        next_use = torch.where(same & later, positions, items.shape[1]).amin(dim=2)  # [batch, L]
        last_use = (positions.view(1, 1, -1) <= positions.view(1, -1, 1)) \
            & (positions.view(1, -1, 1) < next_use.unsqueeze(1)) & real.unsqueeze(1)  # [batch, t, j]
        weight, bias, basket = self.weights(states)  # [batch, L] each
        value = weight.unsqueeze(2) * base + bias.unsqueeze(2) + basket.unsqueeze(2) * now
        return torch.where(last_use, value, torch.zeros_like(value)), last_use

    def serving_scores(self, items: Tensor, timestamps: Tensor | None, at: Tensor | None,
                       user_state: Tensor) -> Tensor:
        """The contract's `history_scores`, [batch, L]: a(h) * B + b for each history position's item, asked at
        `at` (None: the last interaction's time), with h the user vector [batch, hidden]; the same value at
        every use of one item; 0 at padding."""
        items = items.long()
        times = self._times(items, timestamps)
        real = items > 0
        if at is None or timestamps is None:
            now = times.masked_fill(~real, float("-inf")).amax(dim=1)
            now = torch.where(torch.isfinite(now), now, torch.zeros_like(now))  # an all-padding history
        else:
            now = at.to(times.dtype) / self.config.time_unit_s
        last = torch.full((1,), items.shape[1] - 1, device=items.device)
        base, used_now = (part.squeeze(1) for part in self._base_level(items, times, now.unsqueeze(1), last))  # [batch, L]
        weight, bias, basket = self.weights(user_state.unsqueeze(1))
        value = weight * base + bias + basket * used_now
        return torch.where(real, value, torch.zeros_like(value))

    def weights(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a >= 0, b, c) per state: states [..., hidden] -> three [...] tensors (c is 0 without
        current_basket)."""
        raw = self.gate(states) * GATE_SCALE
        basket = raw[..., 2] if self.config.current_basket else torch.zeros_like(raw[..., 2])
        return F.softplus(raw[..., 0]), raw[..., 1], basket

    def _times(self, items: Tensor, timestamps: Tensor | None) -> Tensor:
        """Each position's time in time units, float64 (a day count of 1e4 keeps its seconds)."""
        if timestamps is None:
            return torch.arange(items.shape[1], device=items.device, dtype=torch.float64).expand(items.shape[0], -1)
        return timestamps.to(torch.float64) / self.config.time_unit_s

    def _base_level(self, items: Tensor, times: Tensor, asked: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(B, used now), both [batch, T, L]: for each query (asked [batch, T] at sequence positions `positions`
        [T]) and history position j, ln of the sum of (age + offset)^(-d) over the uses k <= that position of
        j's item (0 where the sum is empty), and 1.0 where one of those uses has age 0 (else 0.0)."""
        real = items > 0
        raw_age = (asked.unsqueeze(2) - times.unsqueeze(1)).clamp(min=0.0).float()  # [b, T, L]
        seen = (torch.arange(items.shape[1], device=items.device).view(1, 1, -1) <= positions.view(1, -1, 1)) \
            & real.unsqueeze(1)  # [batch, T, L(k)]: use k happened by the query's position
        strength = torch.where(seen, (raw_age + self.config.offset).pow(-self.decay), torch.zeros_like(raw_age))
        same = ((items.unsqueeze(2) == items.unsqueeze(1)) & real.unsqueeze(1)).to(strength.dtype)  # [b, j, k]
        total = strength @ same.transpose(1, 2)  # [batch, T, L(j)]: sum over k of strength[t, k] * same[j, k]
        base = torch.where(total > 0, total.clamp(min=torch.finfo(total.dtype).tiny).log(), torch.zeros_like(total))
        used_now = ((seen & (raw_age <= 0)).to(strength.dtype) @ same.transpose(1, 2) > 0).to(strength.dtype)
        return base, used_now


class WithACTRMemory:
    """The contract's two memory hooks for a sequence model that holds an `ACTRMemory` as `self.memory` (mixed in
    before the model class: `class SASRecACTR(WithACTRMemory, SASRec)`)."""

    memory: ACTRMemory

    def history_logits(self, items: Tensor, timestamps: Tensor | None, query_times: Tensor | None,
                       states: Tensor) -> tuple[Tensor, Tensor]:
        return self.memory.training_logits(items, timestamps, query_times, states)

    def history_scores(self, items: Tensor, timestamps: Tensor | None = None,
                       at: Tensor | None = None) -> Tensor:
        self.check_history(items, timestamps)  # type: ignore[attr-defined]
        user = self.user_vector(items, timestamps, at)  # type: ignore[attr-defined]
        return self.memory.serving_scores(items, timestamps, at, user)
