"""Every registered model beside SASRec trains end to end on real data (the embedded ml-latest-small, cut
short as in test_train.QUICK), is logged to a real MLflow store, and its saved model serves recommendations
through the public Recommender API with no model-specific code."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from recsys.retrieval.recommender import Recommender
from recsys.run_config import load_run_config
from recsys.training.train import train

CONFIGS = Path(__file__).parents[2] / "configs"
# One thread: small models gain nothing from a second one, and a GRU's per-step parallel regions stall for
# whole scheduler slices when another process holds the other core (measured: 0.5 s per batch, not 5 ms).
QUICK_DATA = ["data.max_history=30", "trainer.progress_bar=false", "trainer.threads=1"]
QUICK_MODEL = ["model.max_len=30", "model.hidden=32"]  # as test_train.QUICK; popularity has neither key


@pytest.mark.parametrize(
    ("name", "model_overrides"),
    [("bert4rec", QUICK_MODEL), ("bert4rec", [*QUICK_MODEL, "model.output_bias=true"]), ("gru4rec", QUICK_MODEL),
     ("popularity", [])],
    ids=["bert4rec", "bert4rec-output-bias", "gru4rec", "popularity"],
)
def test_model_trains_logs_saves_and_recommends(tmp_path: Path, name: str, model_overrides: list[str]) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_run_config(CONFIGS / f"{name}_ml-latest-small.yaml", [
        *QUICK_DATA, *model_overrides, "trainer.max_epochs=1",
        f"tracking.output_dir={tmp_path / 'runs'}", f"tracking.tracking_uri={tracking_uri}",
    ])
    result = train(cfg)

    run = MlflowClient(tracking_uri=tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["model"] == name
    assert run.data.params["dataset.n_users"] == "610"
    assert 0.0 < run.data.metrics["test_hr_at_50"] <= 1.0  # better than nothing after one epoch (or a count)
    assert run.data.metrics["test_hr_at_10"] == pytest.approx(result.metrics["test_hr@10"])
    assert "model" in {a.path for a in MlflowClient(tracking_uri=tracking_uri).list_artifacts(result.run_id)}
    if name != "popularity":  # a count has no epochs and no train loss
        assert len(MlflowClient(tracking_uri=tracking_uri).get_metric_history(result.run_id, "train_loss")) == 1

    rec = Recommender.load(result.model_dir)
    assert rec.model_name == name
    history = rec.history(1)
    recommendations = rec.recommend(user=1, k=10)
    assert len(recommendations) == 10
    assert len({r.item_id for r in recommendations}) == 10
    assert not {r.item_id for r in recommendations} & set(history)
    scores = [r.score for r in recommendations]
    assert scores == sorted(scores, reverse=True)
    # The same ranking from the history itself as from the known user.
    assert [r.item_id for r in rec.recommend(history=history, k=10)] == [r.item_id for r in recommendations]
