"""CL4SRec's history augmentations, on batches of left-padded histories.

Paper: Xu Xie, Fei Sun, Zhaoyang Liu, Shiwen Wu, Jinyang Gao, Jiandong Zhang, Bolin Ding and Bin Cui,
"Contrastive Learning for Sequential Recommendation", ICDE 2022 (arXiv:2010.14395), Sec. IV-B. Each takes
`items` `[batch, seq_len]` (item ids, 0 = padding, left-padded, the most recent item last), a ratio and a
`torch.Generator` every random number is drawn from (so a seeded generator repeats the views), and returns
a tensor of the same shape, still left-padded: every model reads histories that way (recsys.models.base).
A history of n real items:

- `crop` keeps floor(eta * n) consecutive items (at least 1), starting at a uniform offset.
- `mask` hides floor(gamma * n) items chosen uniformly: replaced by `mask_token` where the model has one
  (BERT4Rec's [MASK]); with `mask_token` 0 (padding: models without one) they are dropped and the rest
  moves right, since a padding id amid a history is not something a left-padded model can read.
- `reorder` shuffles a window of floor(beta * n) consecutive items, starting at a uniform offset.

With `times` (the items' timestamps, aligned), each also returns the views' timestamps: crop and mask move
them with their items; reorder leaves them in place (it changes which item came when, not when the
positions happened, so the times stay ordered). Counts are floor(ratio * n), with a tolerance of 1e-6 so
that 0.3 * 10 is 3 whatever the float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from recsys.data import schema

_ROUNDING = 1e-6


def augment(items: Tensor, augmentations: Sequence[str], *, crop_ratio: float, mask_ratio: float,
            reorder_ratio: float, mask_token: int, generator: torch.Generator,
            times: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """One view of each history: an augmentation drawn uniformly per row from `augmentations`, applied.

    Returns (view [batch, width], its timestamps or None), with the columns that are padding in every row
    trimmed from the left (width <= seq_len, at least 1).
    """
    choice = torch.randint(len(augmentations), (items.shape[0],), generator=generator,
                           device=generator.device).to(items.device)  # [batch]
    view, view_times = items.clone(), None if times is None else times.clone()
    for index, name in enumerate(augmentations):
        if name == "crop":
            out, out_times = crop(items, crop_ratio, generator, times)
        elif name == "mask":
            out, out_times = mask(items, mask_ratio, mask_token, generator, times)
        elif name == "reorder":
            out, out_times = reorder(items, reorder_ratio, generator, times)
        else:
            raise ValueError(f"unknown augmentation {name!r} (known: crop, mask, reorder)")
        rows = (choice == index).unsqueeze(1)  # [batch, 1]
        view = torch.where(rows, out, view)
        if view_times is not None and out_times is not None:
            view_times = torch.where(rows, out_times, view_times)
    real_columns = (view != schema.PADDING_IDX).any(dim=0).nonzero()
    start = min(int(real_columns[0]), view.shape[1] - 1) if len(real_columns) else view.shape[1] - 1
    return view[:, start:], None if view_times is None else view_times[:, start:]


def crop(items: Tensor, ratio: float, generator: torch.Generator,
         times: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A random contiguous floor(ratio * n) items of each history (at least 1), left-padded."""
    seq_len = items.shape[1]
    n = _lengths(items)  # [batch]
    kept = torch.minimum(_count(ratio, n).clamp(min=1), n)  # [batch]
    offset = (_uniform(n.shape, generator, items.device) * (n - kept + 1)).long().clamp(max=(n - kept).clamp(min=0))
    source_start = seq_len - n + offset  # [batch]: column of the first kept item
    columns = torch.arange(seq_len, device=items.device)  # [seq_len]
    first_out = (seq_len - kept).unsqueeze(1)  # [batch, 1]: where the kept items begin in the view
    source = (source_start.unsqueeze(1) + columns - first_out).clamp(0, seq_len - 1)  # [batch, seq_len]
    inside = columns >= first_out  # [batch, seq_len]
    out = torch.where(inside, items.gather(1, source), torch.zeros_like(items))
    if times is None:
        return out, None
    return out, torch.where(inside, times.gather(1, source), torch.zeros_like(times))


def mask(items: Tensor, ratio: float, mask_token: int, generator: torch.Generator,
         times: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """floor(ratio * n) uniformly chosen items of each history replaced by `mask_token`, or, with
    `mask_token` 0 (padding), dropped and the history packed to the right again."""
    real = items != schema.PADDING_IDX  # [batch, seq_len]
    hidden = _count(ratio, _lengths(items))  # [batch]
    # A uniform random order of each row's real items (padding sorts last): its first `hidden` are masked.
    keys = torch.where(real, _uniform(items.shape, generator, items.device), torch.full_like(items, 2, dtype=torch.float64))
    rank = keys.argsort(dim=1).argsort(dim=1)  # [batch, seq_len]: each position's place in that order
    masked = real & (rank < hidden.unsqueeze(1))
    if mask_token != schema.PADDING_IDX:
        return torch.where(masked, torch.full_like(items, mask_token), items), times
    kept = real & ~masked
    # A stable sort on "kept" puts the dropped and padding columns first, the kept items after in their order.
    order = torch.sort(kept.to(torch.int8), dim=1, stable=True).indices  # [batch, seq_len]
    keep_sorted = kept.gather(1, order)
    out = torch.where(keep_sorted, items.gather(1, order), torch.zeros_like(items))
    if times is None:
        return out, None
    return out, torch.where(keep_sorted, times.gather(1, order), torch.zeros_like(times))


def reorder(items: Tensor, ratio: float, generator: torch.Generator,
            times: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Each history with a random contiguous window of floor(ratio * n) items shuffled; times stay in place."""
    seq_len = items.shape[1]
    n = _lengths(items)  # [batch]
    width = _count(ratio, n)  # [batch]
    offset = (_uniform(n.shape, generator, items.device) * (n - width + 1)).long().clamp(max=(n - width).clamp(min=0))
    start = (seq_len - n + offset).unsqueeze(1).to(torch.float64)  # [batch, 1]
    columns = torch.arange(seq_len, device=items.device, dtype=torch.float64)  # [seq_len]
    inside = (columns >= start) & (columns < start + width.unsqueeze(1))  # [batch, seq_len]
    # Sort keys: a column's own index outside the window; inside, a uniform value in [start - 0.5,
    # start + width - 0.5), which stays between the columns before and after the window.
    keys = torch.where(inside, start - 0.5 + _uniform(items.shape, generator, items.device) * width.unsqueeze(1),
                       columns.expand_as(inside))
    return items.gather(1, keys.argsort(dim=1)), times


def _lengths(items: Tensor) -> Tensor:
    return (items != schema.PADDING_IDX).sum(dim=1)  # [batch]


def _count(ratio: float, n: Tensor) -> Tensor:
    return torch.floor(ratio * n.to(torch.float64) + _ROUNDING).long()


def _uniform(shape: tuple[int, ...] | torch.Size, generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) float64 numbers. A generator draws only on its own device: drawn there, then moved (as
    losses.sample_items does)."""
    return torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=torch.float64).to(device)
