"""CL4SRec's augmentations (recsys.data.augment) on hand-made left-padded histories: what each keeps, hides
or moves, that padding stays padding, and that a seeded generator repeats the views."""

from __future__ import annotations

import math

import torch

from recsys.data.augment import augment, crop, mask, reorder

# Left-padded histories of 8, 5, 2, 1 and 10 real items; item ids are distinct within a row, so where an
# item went is visible. Timestamps are the ids times 100 (aligned with the items, 0 at padding).
ITEMS = torch.tensor([
    [0, 0, 11, 12, 13, 14, 15, 16, 17, 18],
    [0, 0, 0, 0, 0, 21, 22, 23, 24, 25],
    [0, 0, 0, 0, 0, 0, 0, 0, 31, 32],
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 41],
    [51, 52, 53, 54, 55, 56, 57, 58, 59, 60],
])
TIMES = ITEMS * 100
LENGTHS = [8, 5, 2, 1, 10]
SEEDS = range(20)  # each test draws with many seeds: the checks hold for every draw, not one lucky one


def real(row: torch.Tensor) -> list[int]:
    return [int(v) for v in row if v != 0]


def is_left_padded(row: torch.Tensor) -> bool:
    values = row.tolist()
    first = next((i for i, v in enumerate(values) if v != 0), len(values))
    return all(v != 0 for v in values[first:])


def test_crop_keeps_a_contiguous_run_of_the_stated_length_with_its_timestamps() -> None:
    for seed in SEEDS:
        out, times = crop(ITEMS, 0.6, torch.Generator().manual_seed(seed), TIMES)
        assert out.shape == ITEMS.shape
        for row, n in enumerate(LENGTHS):
            kept, original = real(out[row]), real(ITEMS[row])
            assert len(kept) == max(1, math.floor(0.6 * n))
            start = original.index(kept[0])
            assert kept == original[start:start + len(kept)]  # contiguous, in order
            assert is_left_padded(out[row])
        torch.testing.assert_close(times, out * 100)  # the timestamps moved with their items


def test_crop_starts_anywhere_the_run_fits() -> None:
    starts = {real(crop(ITEMS, 0.5, torch.Generator().manual_seed(seed))[0][4])[0] for seed in range(200)}
    assert starts == {51, 52, 53, 54, 55, 56}  # 5 of 10 items: a start in the first 6


def test_mask_hides_the_stated_share_with_the_mask_token_and_leaves_the_rest() -> None:
    token = 99
    for seed in SEEDS:
        out, times = mask(ITEMS, 0.5, token, torch.Generator().manual_seed(seed), TIMES)
        assert times is TIMES  # in place: every item keeps its position and time
        for row, n in enumerate(LENGTHS):
            hidden = out[row] == token
            assert int(hidden.sum()) == math.floor(0.5 * n)
            assert not (hidden & (ITEMS[row] == 0)).any()  # padding is never masked
            assert torch.equal(out[row][~hidden], ITEMS[row][~hidden])


def test_mask_without_a_mask_token_drops_the_share_and_stays_left_padded() -> None:
    for seed in SEEDS:
        out, times = mask(ITEMS, 0.3, 0, torch.Generator().manual_seed(seed), TIMES)
        for row, n in enumerate(LENGTHS):
            kept, original = real(out[row]), real(ITEMS[row])
            assert len(kept) == n - math.floor(0.3 * n)  # 0.3 * 10 is 3 despite float rounding
            assert kept == [item for item in original if item in kept]  # a subsequence, order kept
            assert is_left_padded(out[row])
        torch.testing.assert_close(times, out * 100)


def test_reorder_permutes_only_a_window_of_the_stated_length() -> None:
    moved_somewhere = False
    for seed in SEEDS:
        out, times = reorder(ITEMS, 0.6, torch.Generator().manual_seed(seed), TIMES)
        assert times is TIMES  # positions keep their times
        for row, n in enumerate(LENGTHS):
            assert sorted(out[row].tolist()) == sorted(ITEMS[row].tolist())  # the same items, padding included
            assert torch.equal(out[row][ITEMS[row] == 0], ITEMS[row][ITEMS[row] == 0])  # padding untouched
            changed = (out[row] != ITEMS[row]).nonzero().flatten().tolist()
            if changed:
                assert changed[-1] - changed[0] + 1 <= math.floor(0.6 * n)  # within one window
                moved_somewhere = True
    assert moved_somewhere


def test_ratio_zero_changes_nothing_and_ratio_one_masks_everything() -> None:
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(reorder(ITEMS, 0.0, generator)[0], ITEMS)
    assert torch.equal(mask(ITEMS, 0.0, 99, generator)[0], ITEMS)
    assert torch.equal(crop(ITEMS, 1.0, generator)[0], ITEMS)
    assert torch.equal(mask(ITEMS, 1.0, 99, generator)[0] == 99, ITEMS != 0)


def test_views_repeat_with_the_seed_and_differ_without_it() -> None:
    def view(seed: int) -> torch.Tensor:
        return augment(ITEMS, ("crop", "mask", "reorder"), crop_ratio=0.6, mask_ratio=0.3, reorder_ratio=0.6,
                       mask_token=0, generator=torch.Generator().manual_seed(seed), times=TIMES)[0]

    assert torch.equal(view(3), view(3))
    assert not all(torch.equal(view(3), view(seed)) for seed in range(4, 8))


def test_augment_applies_one_listed_augmentation_per_history_and_trims_padding_columns() -> None:
    items = ITEMS[:3, 2:]  # [3, 8]: the histories of 8, 5 and 2 items
    out, times = augment(items, ("crop",), crop_ratio=0.5, mask_ratio=0.0, reorder_ratio=0.0, mask_token=0,
                         generator=torch.Generator().manual_seed(1), times=items * 100)
    assert out.shape == (3, 4)  # the longest crop, 4 of 8 items; columns of padding only are dropped
    assert [len(real(row)) for row in out] == [4, 2, 1]
    torch.testing.assert_close(times, out * 100)
