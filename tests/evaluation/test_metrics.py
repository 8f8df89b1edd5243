"""Full-ranking metrics: hand-computed cases, the exclusion rules, coverage, and a numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.evaluation import RankingAccumulator, mask_scores, rank_metrics, target_ranks

INF = float("inf")


def one_user(scores: list[float]) -> torch.Tensor:
    return torch.tensor([scores])


def test_hand_ranking_values() -> None:
    # Items 1..5 with scores 0.9, 0.5, 0.7, 0.1, 0.3; column 0 (padding) scores highest of all.
    scores = one_user([10.0, 0.9, 0.5, 0.7, 0.1, 0.3])
    m = rank_metrics(scores, torch.tensor([2]), ks=(1, 2, 3, 5))
    assert m["rank"].tolist() == [3]  # items 1 and 3 beat it; padding never counts
    assert m["hr@1"].item() == 0 and m["hr@2"].item() == 0 and m["hr@3"].item() == 1
    assert m["ndcg@3"].item() == pytest.approx(0.5)  # 1 / log2(4)
    assert m["ndcg@5"].item() == pytest.approx(0.5)
    assert m["mrr@3"].item() == pytest.approx(1 / 3)
    assert m["ndcg@2"].item() == 0 and m["mrr@2"].item() == 0
    top = rank_metrics(scores, torch.tensor([1]), ks=(1,))
    assert top["rank"].item() == 1 and top["ndcg@1"].item() == 1 and top["mrr@1"].item() == 1


def test_history_above_the_target_is_excluded() -> None:
    scores = one_user([0.0, 0.9, 0.5, 0.7, 0.1, 0.3])
    # Item 1 (0.9) was already seen: the target (item 2) rises from rank 3 to rank 2.
    m = rank_metrics(scores, torch.tensor([2]), exclude=torch.tensor([[0, 0, 1]]), ks=(2,))
    assert m["rank"].item() == 2
    assert m["ndcg@2"].item() == pytest.approx(1 / math.log2(3))
    assert m["mrr@2"].item() == pytest.approx(0.5)


def test_a_target_in_the_history_is_not_excluded() -> None:
    scores = one_user([0.0, 0.9, 0.5, 0.7, 0.1, 0.3])
    # History holds the target 2 and item 3: item 3 goes, the target stays; item 1 still beats it.
    ranks = target_ranks(scores, torch.tensor([2]), exclude=[torch.tensor([2, 3, 2])])
    assert ranks.tolist() == [2]


def test_exclusion_as_list_or_padded_tensor_agree() -> None:
    torch.manual_seed(0)
    scores = torch.randn(3, 8)
    targets = torch.tensor([1, 4, 7])
    histories = [torch.tensor([2, 3]), torch.tensor([], dtype=torch.long), torch.tensor([7, 1, 5, 6])]
    padded = torch.tensor([[0, 0, 2, 3], [0, 0, 0, 0], [7, 1, 5, 6]])
    assert torch.equal(target_ranks(scores, targets, histories), target_ranks(scores, targets, padded))


def test_ties_count_against_the_model() -> None:
    flat = one_user([5.0, 1.0, 1.0, 1.0, 1.0])
    assert target_ranks(flat, torch.tensor([3])).tolist() == [4]  # all four items tie: last, not first
    one_tie = one_user([0.0, 2.0, 1.0, 1.0, 0.0])
    assert target_ranks(one_tie, torch.tensor([2])).tolist() == [3]


def test_masking_leaves_the_callers_scores_alone_unless_inplace() -> None:
    scores = one_user([0.0, 0.9, 0.5, 0.7])
    original = scores.clone()
    masked = mask_scores(scores, torch.tensor([2]), exclude=torch.tensor([[1, 2]]))
    assert torch.equal(scores, original)
    assert torch.equal(masked, torch.tensor([[-INF, -INF, 0.5, 0.7]]))
    mask_scores(scores, torch.tensor([2]), exclude=torch.tensor([[1, 2]]), inplace=True)
    assert torch.equal(scores, masked)


def test_coverage_hand_case() -> None:
    # Five items. User A's order: 1, 3, 2, ...; user B's: 3, 4, 1, ...; user C's: 1, 5, ... but 1 is in its history.
    scores = torch.tensor(
        [
            [9.0, 0.9, 0.7, 0.8, 0.1, 0.2],
            [9.0, 0.7, 0.1, 0.9, 0.8, 0.2],
            [9.0, 0.9, 0.1, 0.2, 0.3, 0.8],
        ]
    )
    acc = RankingAccumulator(n_items=5, ks=(1, 2))
    acc.update(scores, torch.tensor([2, 2, 2]), history=[torch.tensor([]), torch.tensor([]), torch.tensor([1])])
    result = acc.compute()
    # top-1: {1}, {3}, {5} -> 3 of 5 items; top-2 adds 3, 4 and 4 -> {1, 3, 4, 5}.
    assert result["coverage@1"] == pytest.approx(3 / 5)
    assert result["coverage@2"] == pytest.approx(4 / 5)
    assert result["n_users"] == 3


def test_coverage_ignores_excluded_items_when_candidates_run_out() -> None:
    # Three items, K = 5: user's history removes items 1 and 3, leaving only the target 2 to recommend.
    acc = RankingAccumulator(n_items=3, ks=(5,))
    acc.update(one_user([0.0, 0.9, 0.1, 0.5]), torch.tensor([2]), history=torch.tensor([[1, 3]]))
    result = acc.compute()
    assert result["coverage@5"] == pytest.approx(1 / 3)
    assert result["hr@5"] == 1.0


def test_accumulator_batches_equal_one_batch() -> None:
    torch.manual_seed(1)
    scores = torch.randn(20, 31)
    targets = torch.randint(1, 31, (20,))
    history = torch.randint(0, 31, (20, 6))
    whole = RankingAccumulator(30, ks=(1, 5, 10))
    whole.update(scores, targets, history)
    parts = RankingAccumulator(30, ks=(1, 5, 10))
    for i in range(0, 20, 7):
        parts.update(scores[i : i + 7], targets[i : i + 7], history[i : i + 7])
    assert parts.compute() == pytest.approx(whole.compute())


def test_errors_are_raised_with_the_values() -> None:
    acc = RankingAccumulator(4)
    with pytest.raises(ValueError, match="no users"):
        acc.compute()
    with pytest.raises(ValueError, match=r"n_items \+ 1 = 5"):
        acc.update(torch.zeros(2, 7), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"1\.\.4, got values in 0\.\.2"):
        acc.update(torch.zeros(2, 5), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(torch.full((1, 5), float("nan")), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"0\.\.4 \(0 = pad\), got values in 0\.\.9"):
        acc.update(torch.zeros(1, 5), torch.tensor([1]), torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="ks must be positive"):
        RankingAccumulator(4, ks=(0, 5))


# ---------------------------------------------------------------------------------------------------------
# Against an independent, deliberately plain numpy implementation


def reference_metrics(
    scores: np.ndarray, targets: np.ndarray, histories: list[np.ndarray], ks: tuple[int, ...]
) -> dict[str, float]:
    n_users, width = scores.shape
    n_items = width - 1
    sums: dict[str, float] = {}
    tops: dict[int, set[int]] = {k: set() for k in ks}
    for u in range(n_users):
        seen = set(histories[u].tolist()) - {int(targets[u])}
        candidates = [i for i in range(1, n_items + 1) if i not in seen]
        order = sorted(candidates, key=lambda i: -scores[u, i])  # random floats: no ties
        rank = order.index(int(targets[u])) + 1
        for k in ks:
            hit = rank <= k
            sums[f"hr@{k}"] = sums.get(f"hr@{k}", 0.0) + hit
            sums[f"ndcg@{k}"] = sums.get(f"ndcg@{k}", 0.0) + (1 / np.log2(rank + 1) if hit else 0.0)
            sums[f"mrr@{k}"] = sums.get(f"mrr@{k}", 0.0) + (1 / rank if hit else 0.0)
            tops[k].update(np.array(candidates)[np.argsort(-scores[u, candidates])][:k].tolist())
    result = {name: total / n_users for name, total in sums.items()}
    for k in ks:
        result[f"coverage@{k}"] = len(tops[k]) / n_items
    result["n_users"] = float(n_users)
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, ks = 37, 23, (1, 3, 5, 10, 30)
    scores = rng.standard_normal((n_users, n_items + 1)).astype(np.float32)
    targets = rng.integers(1, n_items + 1, n_users)
    histories = [rng.integers(1, n_items + 1, rng.integers(0, 15)) for _ in range(n_users)]
    for u in range(0, n_users, 4):  # some users re-consume their target
        histories[u] = np.append(histories[u], targets[u])
    expected = reference_metrics(scores, targets, histories, ks)

    acc = RankingAccumulator(n_items, ks)
    for start in range(0, n_users, 10):
        stop = min(start + 10, n_users)
        acc.update(
            torch.from_numpy(scores[start:stop]),
            torch.from_numpy(targets[start:stop]),
            [torch.from_numpy(h) for h in histories[start:stop]],
        )
    assert acc.compute() == pytest.approx(expected)
