"""The repeat baselines and ACT-R memory: rankings on hand-built histories, the activation against its
formula, and ACT-R trained on a small real Ta-Feng slice, saved, loaded and recommending seen items."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models import ACTR, ACTRConfig, PersonalPopularity, RepeatBaselineConfig, RepeatRecent

TAFENG = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tafeng" / "tafeng_merged.json.gz"
DAY = 86_400.0
# float32 scores of sums of a few terms of size <= 10: a relative error of 1e-7 each
TOL = 1e-5


def ranking(scores: torch.Tensor) -> list[int]:
    """Item ids 1..n by score, best first (column 0 is padding)."""
    return (torch.argsort(scores[0, 1:], descending=True, stable=True) + 1).tolist()


def fitted(model_cls, config) -> object:  # type: ignore[no-untyped-def]
    # training counts: item 5 most popular, then 6, then 4; items 1-3 rare
    return model_cls(6, config).fit_counts([[5, 5, 5, 6, 6, 4, 1, 2, 3]])


HISTORY = torch.tensor([[0, 2, 1, 3, 1, 2, 4]])  # counts: 1 and 2 twice, 3 and 4 once; 2 later than 1, 4 last


def test_personal_popularity_ranks_own_counts_then_recency_then_popularity() -> None:
    model = fitted(PersonalPopularity, RepeatBaselineConfig(max_len=8))
    assert ranking(model.score(HISTORY)) == [2, 1, 4, 3, 5, 6]
    # the score is the documented one: count + (last position + 1) / (L + 1) for history items
    assert float(model.score(HISTORY)[0, 2]) == pytest.approx(2 + 6 / 8, abs=TOL)


def test_repeat_recent_ranks_the_last_items_first() -> None:
    model = fitted(RepeatRecent, RepeatBaselineConfig(max_len=8))
    assert ranking(model.score(HISTORY)) == [4, 2, 1, 3, 5, 6]
    none = fitted(RepeatRecent, RepeatBaselineConfig(max_len=8, fallback="none"))
    assert float(none.score(HISTORY)[0, 5]) == 0.0 and float(none.score(HISTORY)[0, 6]) == 0.0


def test_actr_activation_equals_the_formula() -> None:
    # item 7 at days 0 and 2, item 8 at day 2 (same basket as 7), item 9 alone at day 3: now = day 3
    items = torch.tensor([[7, 7, 8, 9]])
    times = torch.tensor([[0.0, 2 * DAY, 2 * DAY, 3 * DAY]])
    model = ACTR(10, ACTRConfig(max_len=4, decay=0.5, offset=1.0, spreading_weight=0.0))
    b7 = math.log((3 + 1) ** -0.5 + (1 + 1) ** -0.5)
    b8 = math.log((1 + 1) ** -0.5)
    b9 = math.log((0 + 1) ** -0.5)
    assert model.activation(items, times).tolist()[0] == pytest.approx([b7, b7, b8, b9], abs=TOL)
    # asked at day 5 instead, item 8's one use is 3 days old
    later = model.activation(items, times, torch.tensor([5 * DAY]))[0, 2]
    assert float(later) == pytest.approx(math.log((3 + 1) ** -0.5), abs=TOL)
    # spreading: the last basket is {9} alone, so no use shares a basket with a recent item other than itself
    # and S = 0 everywhere. With 7, 8 and 9 in one last basket, one use of each shares it: S = ln(1 + 1) each
    spread = ACTR(10, ACTRConfig(max_len=4, decay=0.5, offset=1.0, spreading_weight=1.0))
    assert spread.activation(items, times).tolist()[0] == pytest.approx([b7, b7, b8, b9], abs=TOL)
    together = torch.tensor([[0.0, 3 * DAY, 3 * DAY, 3 * DAY]])
    a = spread.activation(items, together).tolist()[0]
    b7_together = math.log(4 ** -0.5 + 1.0)
    assert a == pytest.approx([b7_together + math.log(2), b7_together + math.log(2), math.log(2), math.log(2)],
                              abs=TOL)


def test_actr_ranks_history_items_by_activation_above_the_rest() -> None:
    model = fitted(ACTR, ACTRConfig(max_len=8))
    times = torch.tensor([[0, 1, 2, 3, 4, 5, 9]]) * DAY
    order = ranking(model.score(HISTORY, times))
    assert set(order[:4]) == {1, 2, 3, 4} and order[4:] == [5, 6]


def test_bad_memory_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"decay: must be at least 0, got -0.5"):
        ACTRConfig(decay=-0.5)
    with pytest.raises(ConfigError, match=r"time_unit_s: must be greater than 0"):
        ACTRConfig(time_unit_s=0.0)
    with pytest.raises(ConfigError, match=r"fallback: 'random' is not one of"):
        RepeatBaselineConfig(fallback="random")


@pytest.mark.skipif(not TAFENG.is_file(), reason=f"the Ta-Feng baskets are not at {TAFENG}")
def test_actr_trains_on_a_real_slice_saves_loads_and_recommends_seen_items(tmp_path: Path) -> None:
    from recsys.retrieval import Recommender
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    baskets = json.loads(gzip.decompress(TAFENG.read_bytes()))
    log = tmp_path / "tafeng.json"
    log.write_text(json.dumps({u: baskets[u] for u in list(baskets)[:200]}))
    cfg = load_run_config(Path(__file__).resolve().parents[2] / "configs" / "actr_tafeng.yaml", [
        f"data.interactions_file={log}", f"data.cache_dir={tmp_path / 'cache'}", "model.max_len=50",
        "trainer.progress_bar=false", "tracking.enabled=false", f"tracking.output_dir={tmp_path / 'runs'}"])
    result = train(cfg)
    assert result.metrics["test_repeat_share"] > 0 and "test_repeat_ndcg@10" in result.metrics
    rec = Recommender.load(result.model_dir)
    assert rec.exclude_seen_default is False  # the config's evaluation.exclude_seen: false
    user = next(u for u in rec._user_idx if len(set(rec.history(u))) >= 3)
    top = rec.recommend(user=user, k=10)
    history = set(rec.history(user))
    window = set(rec.history(user)[-50:])
    assert {r.item_id for r in top[:len(window)]} <= window  # history items rank first
    # the two-stage result (FAISS, then the window re-scored) equals the model's full scores
    idx = rec._user_idx[user]
    items = torch.tensor([rec._histories[idx][-50:].tolist()])
    times = torch.tensor([rec._history_times[idx][-50:].tolist()])
    with torch.no_grad():
        scores = rec._model.score(items, times)[0]
    scores[0] = float("-inf")
    assert [r.score for r in top] == pytest.approx(scores.topk(10).values.tolist(), abs=TOL)
    assert not {r.item_id for r in rec.recommend(user=user, k=10, exclude_seen=True)} & history
