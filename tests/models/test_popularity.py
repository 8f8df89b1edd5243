"""Popularity: counts from a hand-built training frame, the exact ranking and metrics they give through the
shared evaluator (history excluded), the score contract, the state dict, config and registry."""

from __future__ import annotations

import polars as pl
import pytest
import torch
from torch.utils.data import DataLoader

from recsys.config import from_dict, to_dict
from recsys.data import schema
from recsys.data.batches import EvaluationRows, pass_through
from recsys.evaluation.runner import evaluate_loader
from recsys.models import MODELS, Popularity, PopularityConfig, get_model_spec

N_ITEMS = 6
# Training counts: item 4 x6, 3 x4, 5 x3, 2 x2, 1 x1, 6 never. Popularity order: 4, 3, 5, 2, 1, 6.
TRAIN = pl.DataFrame(
    {schema.USER_IDX: [1, 2, 3], schema.ITEMS: [[1, 2, 2, 3, 3, 3], [3, 4, 4, 4, 4, 4], [5, 5, 5, 4]]},
    schema={schema.USER_IDX: pl.Int32, schema.ITEMS: pl.List(pl.Int32)},
)
COUNTS = [0.0, 1.0, 2.0, 4.0, 6.0, 3.0, 0.0]


def fitted() -> Popularity:
    return Popularity(N_ITEMS, PopularityConfig()).fit_counts(TRAIN[schema.ITEMS].to_list())


def test_counts_and_ranking_by_popularity() -> None:
    model = fitted()
    assert model.item_vectors().squeeze(1).tolist() == COUNTS
    assert model.objective().batches == "count"
    history = torch.tensor([[1], [0]])
    scores = model.score(history)  # [2, n_items + 1]
    assert scores.shape == (2, N_ITEMS + 1)
    assert torch.equal(scores[0], scores[1])  # the same for everyone
    assert (torch.argsort(scores[0, 1:], descending=True) + 1).tolist() == [4, 3, 5, 2, 1, 6]
    torch.testing.assert_close(scores, model.user_vector(history) @ model.item_vectors().T)
    assert model.user_vector(history).tolist() == [[1.0], [1.0]]


def test_tensor_input_counts_the_same_and_ignores_padding() -> None:
    windows = torch.tensor([[0, 0, 1, 2, 2, 3, 3, 3], [0, 0, 3, 4, 4, 4, 4, 4], [0, 0, 0, 0, 5, 5, 5, 4]])
    model = Popularity(N_ITEMS, PopularityConfig()).fit_counts(windows)
    assert model.item_vectors().squeeze(1).tolist() == COUNTS
    with pytest.raises(ValueError, match="1..6"):
        model.fit_counts([[1, 7]])


def test_exact_metrics_through_the_shared_evaluator_with_history_excluded() -> None:
    # user 1: history [4], target 3 -> 4 is excluded, 3 comes first: rank 1.
    # user 2: history [1, 2], target 5 -> ranking 4, 3, 5: rank 3.
    # user 3: no history, target 6 (never seen in training) -> last of 6: rank 6.
    test = pl.DataFrame(
        {schema.USER_IDX: [1, 2, 3], schema.HISTORY: [[4], [1, 2], []], schema.TARGET: [3, 5, 6]},
        schema={schema.USER_IDX: pl.Int32, schema.HISTORY: pl.List(pl.Int32), schema.TARGET: pl.Int32},
    )
    rows = EvaluationRows(test, max_len=PopularityConfig().max_len)
    metrics = evaluate_loader(fitted(), DataLoader(rows, batch_size=2, collate_fn=pass_through), N_ITEMS)
    assert metrics["hr@1"] == pytest.approx(1 / 3)
    assert metrics["hr@5"] == pytest.approx(2 / 3)
    assert metrics["ndcg@5"] == pytest.approx((1 + 0.5) / 3)  # 1/log2(1+1) and 1/log2(3+1)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 3)


def test_state_dict_round_trip_and_no_trainable_parameters() -> None:
    model = fitted()
    assert [name for name, _ in model.named_parameters()] == ["counts"]
    assert not any(p.requires_grad for p in model.parameters())
    fresh = Popularity(N_ITEMS, PopularityConfig())
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.score(torch.zeros(1, 1, dtype=torch.long)), model.score(torch.zeros(1, 1, dtype=torch.long)))


def test_config_and_registry() -> None:
    assert from_dict(PopularityConfig, to_dict(PopularityConfig(max_len=5)), "model") == PopularityConfig(max_len=5)
    with pytest.raises(ValueError, match="max_len"):
        PopularityConfig(max_len=0)
    assert MODELS["popularity"] == (Popularity, PopularityConfig)
    assert get_model_spec("popularity") == (Popularity, PopularityConfig)
