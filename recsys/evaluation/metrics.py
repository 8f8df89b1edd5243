"""Full-ranking evaluation of next-item prediction: HR@K, NDCG@K, MRR@K and catalogue coverage@K.

Every user's target is ranked against the WHOLE catalogue (no sampled negatives: sampled metrics can
reorder models, Krichene & Rendle, KDD 2020). The rules, in order:

1. Column 0 of `scores` is padding: it is never ranked and never recommended.
2. When the user's history is given, items in it are excluded (their scores become -inf): a model is not
   rewarded or punished for items the user already consumed. The target itself is never excluded, even
   when it also appears in the history (a re-consumption is a legitimate next item).
3. rank = number of non-excluded items whose score is >= the target's score, the target included. So
   rank = 1 + #(higher) + #(other items tied with the target): ties count against the model (pessimistic).
   A model that outputs the same score for everything ranks every target last, not first.
4. With a single target per user, HR@K (= Recall@K) = [rank <= K], NDCG@K = 1 / log2(rank + 1) if
   rank <= K else 0, MRR@K = 1 / rank if rank <= K else 0. Reported values are means over users.
5. Repeat and explore targets: with `repeats` (a [batch] bool, True where the target is in the user's
   history: `repeat_targets`), the accumulator also reports every metric over the repeat targets alone
   (repeat_hr@K, ...) and over the others, new to the user (explore_hr@K, ...), and repeat_share, the
   share of repeat targets. A group with no user has no such keys. With the history excluded (rule 2) a
   repeat target competes only with items the user has not had; include it (no `history`) to rank
   repeats against each other, as repeat-consumption logs need.
6. coverage@K = fraction of the n_items real items that appear in at least one user's top-K list (excluded
   items never do). Ties at the K-th place are broken by `torch.topk`, i.e. arbitrarily.

Pass float32 scores: bfloat16 keeps 8 bits of mantissa, so many items tie with the target and, by rule 3,
push it down (compute the final `user_vector @ item_vectors().T` outside autocast).

Memory: a batch of scores is [batch, n_items + 1] float32, 4 * batch * (n_items + 1) bytes, and ranking
needs about two more matrices of that size (the masked copy and a comparison). Recommended eval batch size:
512-1024 users up to ~100k items; 64-128 for a million items (256 MB per matrix at 64). The accumulator
itself keeps only O(n_items) state. Everything here is pure torch and takes tensors, so it
depends on no model or data module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
Exclude = Tensor | Sequence[Tensor] | None
"""Items to exclude per user: a padded LongTensor [batch, L] (0 = pad) or a list of 1-D LongTensors."""


def mask_scores(scores: Tensor, targets: Tensor, exclude: Exclude = None, inplace: bool = False) -> Tensor:
    """Scores with column 0 and each user's excluded items set to -inf, the target's score kept.

    scores: [batch, n_items + 1] float; targets: [batch] item ids in 1..n_items. With `inplace` the caller's
    tensor is overwritten (saving a copy of a possibly huge matrix); otherwise a masked copy is returned.
    """
    _check_scores(scores, targets)
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets]  # [batch]
    masked = scores if inplace else scores.clone()
    masked[:, 0] = float("-inf")
    if exclude is not None:
        history = _pad_exclude(exclude, scores.shape[0], scores.shape[1] - 1, scores.device)  # [batch, L]
        masked.scatter_(1, history, float("-inf"))  # padding ids 0 hit column 0, already -inf
        masked[rows, targets] = target_scores  # rule 2: the target is never excluded
    return masked


def target_ranks(scores: Tensor, targets: Tensor, exclude: Exclude = None, inplace: bool = False) -> Tensor:
    """1-based pessimistic rank of each target among the non-excluded real items: [batch] int64 (rule 3)."""
    masked = mask_scores(scores, targets, exclude, inplace)
    return _ranks(masked, targets)


def rank_metrics(
    scores: Tensor,
    targets: Tensor,
    exclude: Exclude = None,
    ks: Sequence[int] = DEFAULT_KS,
    inplace: bool = False,
) -> dict[str, Tensor]:
    """Per-user metrics: {"rank": [batch] int64, "hr@K", "ndcg@K", "mrr@K": [batch] float64 for each K}.

    scores: [batch, n_items + 1]; targets: [batch]; exclude: the users' histories (see module rules).
    """
    ks = _check_ks(ks)
    return _metrics_from_ranks(target_ranks(scores, targets, exclude, inplace), ks)


_GROUPS = ("repeat_", "explore_")  # the prefixes of the repeat/explore split's sums (rule 5)


class RankingAccumulator:
    """Streams batches of users and reports mean metrics over all of them.

    State is O(n_items): running sums per metric and, per item, the best position it reached in any user's
    top-max(ks) list (for coverage). Batches may live on any device; the state follows the first batch.
    """

    def __init__(self, n_items: int, ks: Sequence[int] = DEFAULT_KS) -> None:
        if n_items < 1:
            raise ValueError(f"n_items must be at least 1, got {n_items}")
        self.n_items = n_items
        self.ks = _check_ks(ks)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.n_users = 0
        self.n_repeat_users = 0
        self._split = False  # whether any batch said which targets repeat
        self._sums: dict[str, Tensor] = {}
        self._best_position: Tensor | None = None  # [n_items + 1] int64

    def update(self, scores: Tensor, targets: Tensor, history: Exclude = None, inplace: bool = False,
               repeats: Tensor | None = None) -> None:
        """Add a batch: scores [batch, n_items + 1], targets [batch], history to exclude (or None), and
        `repeats` [batch] bool (True: the target is in the user's history; see rule 5) or None.

        With `inplace`, `scores` is overwritten by its masked version instead of being copied.
        """
        if scores.dim() != 2 or scores.shape[1] != self.n_items + 1:
            raise ValueError(
                f"scores must be [batch, n_items + 1 = {self.n_items + 1}], got {tuple(scores.shape)}"
            )
        if repeats is not None and tuple(repeats.shape) != (scores.shape[0],):
            raise ValueError(f"repeats must be [{scores.shape[0]}] (one flag per user), got {tuple(repeats.shape)}")
        masked = mask_scores(scores, targets, history, inplace)
        groups: list[tuple[str, Tensor | None]] = [("", None)]
        if repeats is not None:
            repeats = repeats.to(device=masked.device, dtype=torch.bool)
            groups += [("repeat_", repeats), ("explore_", ~repeats)]
            self._split = True
            self.n_repeat_users += int(repeats.sum())
        for name, values in _metrics_from_ranks(_ranks(masked, targets), self.ks).items():
            if name == "rank":
                continue
            for prefix, members in groups:
                total = (values if members is None else values[members]).sum()
                key = prefix + name
                self._sums[key] = self._sums[key] + total if key in self._sums else total
        self._update_coverage(masked)
        self.n_users += int(scores.shape[0])

    def compute(self) -> dict[str, float]:
        """Means over users: "hr@K", "ndcg@K", "mrr@K", "coverage@K" for each K, and "n_users"."""
        if self.n_users == 0 or self._best_position is None:
            raise ValueError("no users to evaluate: call update() with at least one batch first")
        counts = {"repeat_": self.n_repeat_users, "explore_": self.n_users - self.n_repeat_users}
        result: dict[str, float] = {}
        for name, total in self._sums.items():
            prefix = next((p for p in counts if name.startswith(p)), "")
            users = counts[prefix] if prefix else self.n_users
            if users:  # an empty group (no repeat target at all) has no mean to report
                result[name] = float(total) / users
        real = self._best_position[1:]  # [n_items]
        for k in self.ks:
            result[f"coverage@{k}"] = float((real < k).sum()) / self.n_items
        result["n_users"] = float(self.n_users)
        if self._split:
            result["repeat_share"] = self.n_repeat_users / self.n_users
            result["n_repeat_users"] = float(self.n_repeat_users)
        return result

    def all_reduce(self, device: torch.device | str = "cpu", group: object | None = None) -> None:
        """Merge the users every process of a torch.distributed group scored into each process's state: sums
        and user counts added, each item's best top-K position the minimum over processes. Each user must
        have been scored by exactly one process; `compute` then gives every process the means over all
        users (a sum of per-user values over a sum of counts, never a mean of per-process means). Sums are
        float64, so only their order differs from one process's: |difference| ~1e-16 relative. A process
        that scored nobody still takes part. `device`: where the collective runs (a CUDA device for NCCL)."""
        import torch.distributed as dist

        keys = self._sum_keys()
        counts = torch.tensor([self.n_users, self.n_repeat_users, int(self._split)], dtype=torch.float64)
        sums = torch.stack([self._sums[k].to(device, torch.float64) if k in self._sums
                            else torch.zeros((), dtype=torch.float64, device=device) for k in keys])
        packed = torch.cat([counts.to(device), sums])
        best = (self._best_position.to(device) if self._best_position is not None
                else torch.full((self.n_items + 1,), self._never(), dtype=torch.int64, device=device))
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(best, op=dist.ReduceOp.MIN, group=group)
        self.n_users, self.n_repeat_users, self._split = int(packed[0]), int(packed[1]), bool(packed[2] > 0)
        self._sums = {k: packed[3 + i] for i, k in enumerate(keys) if self._split or not k.startswith(_GROUPS)}
        self._best_position = best

    def _sum_keys(self) -> list[str]:
        """Every metric sum `update` can make, in a fixed order (the same on every process)."""
        names = [f"{metric}@{k}" for k in self.ks for metric in ("hr", "ndcg", "mrr")]
        return [prefix + name for prefix in ("", *_GROUPS) for name in names]

    def _update_coverage(self, masked: Tensor) -> None:
        k = min(max(self.ks), self.n_items)
        values, items = masked.topk(k, dim=1)  # [batch, k], best first
        positions = torch.arange(k, device=masked.device).expand_as(items)  # [batch, k]
        # An excluded (-inf) item only shows up when a user has fewer than k candidates: not a recommendation.
        positions = positions.masked_fill(torch.isneginf(values), self._never())
        if self._best_position is None:
            self._best_position = torch.full(
                (self.n_items + 1,), self._never(), dtype=torch.int64, device=masked.device
            )
        best = self._best_position.to(masked.device)
        self._best_position = best.scatter_reduce(0, items.flatten(), positions.flatten(), reduce="amin")

    def _never(self) -> int:
        return max(self.ks)  # a position no top-K list with K in ks reaches


def repeat_targets(seen: Tensor, targets: Tensor) -> Tensor:
    """[batch] bool: whether each target is among the user's history items `seen` ([batch, L], 0 = pad)."""
    return (seen == targets.unsqueeze(1).to(seen.dtype)).any(dim=1)


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _ranks(masked: Tensor, targets: Tensor) -> Tensor:
    rows = torch.arange(masked.shape[0], device=masked.device)
    target_scores = masked[rows, targets].unsqueeze(1)  # [batch, 1]
    return (masked >= target_scores).sum(dim=1)  # [batch]; counts the target itself, so >= 1


def _metrics_from_ranks(ranks: Tensor, ks: tuple[int, ...]) -> dict[str, Tensor]:
    rank_f = ranks.to(torch.float64)  # [batch]
    ndcg = 1.0 / torch.log2(rank_f + 1.0)
    rr = 1.0 / rank_f
    out: dict[str, Tensor] = {"rank": ranks}
    zero = torch.zeros_like(rank_f)
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = hit.to(torch.float64)
        out[f"ndcg@{k}"] = torch.where(hit, ndcg, zero)
        out[f"mrr@{k}"] = torch.where(hit, rr, zero)
    return out


def _check_scores(scores: Tensor, targets: Tensor) -> None:
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [batch, n_items + 1] with n_items >= 1, got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(f"targets must be [{scores.shape[0]}] (one per row of scores), got {tuple(targets.shape)}")
    if targets.numel() == 0:
        return
    n_items = scores.shape[1] - 1
    low, high = int(targets.min()), int(targets.max())
    if low < 1 or high > n_items:
        raise ValueError(f"targets must be item ids in 1..{n_items}, got values in {low}..{high}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN: a NaN compares false with everything, which would fake a top rank")


def _pad_exclude(exclude: Tensor | Sequence[Tensor], batch: int, n_items: int, device: torch.device) -> Tensor:
    """A padded [batch, L] int64 tensor of item ids on `device`, checked to lie in 0..n_items."""
    if isinstance(exclude, Tensor):
        if exclude.dim() != 2 or exclude.shape[0] != batch:
            raise ValueError(f"exclude must be [{batch}, L] item ids, got shape {tuple(exclude.shape)}")
        padded = exclude.to(device=device, dtype=torch.int64)
    else:
        if len(exclude) != batch:
            raise ValueError(f"exclude must hold one history per user: {batch} users, {len(exclude)} histories")
        rows = [torch.as_tensor(h, dtype=torch.int64).reshape(-1) for h in exclude]
        width = max(max((len(r) for r in rows), default=0), 1)
        padded = torch.zeros(batch, width, dtype=torch.int64)
        for i, row in enumerate(rows):
            padded[i, width - len(row) :] = row
        padded = padded.to(device)
    if padded.numel() and (int(padded.min()) < 0 or int(padded.max()) > n_items):
        raise ValueError(
            f"exclude must hold item ids in 0..{n_items} (0 = pad), got values in {int(padded.min())}..{int(padded.max())}"
        )
    return padded


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return tuple(sorted(set(ks)))


__all__ = [
    "DEFAULT_KS",
    "RankingAccumulator",
    "mask_scores",
    "rank_metrics",
    "repeat_targets",
    "target_ranks",
]
