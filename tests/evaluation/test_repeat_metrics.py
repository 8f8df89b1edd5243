"""evaluation.exclude_seen and the repeat/explore split of the metrics, on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.config import EvaluationConfig
from recsys.evaluation.metrics import RankingAccumulator, repeat_targets

# Sums of a few float64 terms: exact up to rounding.
TOL = 1e-12


def test_exclude_seen_false_lets_a_seen_target_be_ranked_among_seen_items() -> None:
    # items 1..4; the user's history is [1, 2]; the target 2 is a repeat, and item 1 (seen) outscores it
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.1, 0.7]])
    target, seen = torch.tensor([2]), torch.tensor([[1, 2]])
    excluded = RankingAccumulator(4, ks=(1, 10))
    excluded.update(scores.clone(), target, seen)
    ranked = RankingAccumulator(4, ks=(1, 10))
    ranked.update(scores.clone(), target, None)
    assert excluded.compute()["mrr@10"] == 1.0  # item 1 left out: the target is first
    assert ranked.compute()["mrr@10"] == 0.5  # item 1 competes: the target is second
    assert EvaluationConfig().exclude_seen is True  # today's behaviour stays the default


def test_repeat_and_explore_metrics_equal_a_hand_computation() -> None:
    # three users, targets 3, 4, 1; histories [3, 1], [2], [1]: users 0 and 2 repeat, user 1 explores
    seen = torch.tensor([[3, 1], [0, 2], [0, 1]])
    targets = torch.tensor([3, 4, 1])
    scores = torch.tensor([[0.0, 0.5, 0.4, 0.3, 0.2],   # target 3 at rank 3
                           [0.0, 0.1, 0.9, 0.2, 0.8],   # target 4 at rank 2
                           [0.0, 0.9, 0.1, 0.2, 0.3]])  # target 1 at rank 1
    repeats = repeat_targets(seen, targets)
    assert repeats.tolist() == [True, False, True]
    acc = RankingAccumulator(4, ks=(10,))
    acc.update(scores, targets, None, repeats=repeats)
    out = acc.compute()
    ndcg = [1 / math.log2(4), 1 / math.log2(3), 1.0]
    assert out["repeat_share"] == pytest.approx(2 / 3, abs=TOL) and out["n_repeat_users"] == 2
    assert out["ndcg@10"] == pytest.approx(sum(ndcg) / 3, abs=TOL)
    assert out["repeat_ndcg@10"] == pytest.approx((ndcg[0] + ndcg[2]) / 2, abs=TOL)
    assert out["explore_ndcg@10"] == pytest.approx(ndcg[1], abs=TOL)
    assert out["repeat_mrr@10"] == pytest.approx((1 / 3 + 1) / 2, abs=TOL)
    assert out["explore_hr@10"] == 1.0


def test_a_split_with_no_repeat_reports_no_repeat_means() -> None:
    acc = RankingAccumulator(3, ks=(10,))
    acc.update(torch.tensor([[0.0, 0.3, 0.2, 0.1]]), torch.tensor([2]), None, repeats=torch.tensor([False]))
    out = acc.compute()
    assert out["repeat_share"] == 0.0 and "repeat_ndcg@10" not in out and out["explore_ndcg@10"] == out["ndcg@10"]
    with pytest.raises(ValueError, match=r"repeats must be \[1\]"):
        acc.update(torch.tensor([[0.0, 0.3, 0.2, 0.1]]), torch.tensor([2]), None, repeats=torch.tensor([True, False]))
