"""Loading from MLflow (runs:/ and models:/ on a real local store), the pyfunc flavour, and exact retrieval on a
really trained model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.data.batches import left_pad
from recsys.errors import ModelLoadError
from recsys.retrieval import Recommender
from recsys.saved_model import SavedModel, save_model


@pytest.fixture(scope="module")
def tiny_store(tiny_saved: SavedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(tracking URI, run id, model dir): the tiny model logged with MlflowClient and registered as 'tiny'."""
    root = tmp_path_factory.mktemp("tiny-store")
    model_dir = save_model(tiny_saved, root / "model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("tiny", artifact_location=str(root / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    client.set_terminated(run_id)
    client.create_registered_model("tiny")
    client.create_model_version("tiny", f"runs:/{run_id}/model", run_id=run_id)
    return uri, run_id, model_dir


@pytest.mark.parametrize("uri", ["runs:/{run_id}/model", "models:/tiny/1"])
def test_load_from_mlflow_uri_equals_the_directory(tiny_store: tuple[str, str, Path], tmp_path: Path,
                                                   uri: str) -> None:
    tracking_uri, run_id, model_dir = tiny_store
    uri = uri.format(run_id=run_id)
    rec = Recommender.load(uri, tracking_uri=tracking_uri, cache_dir=tmp_path)
    assert rec.directory is not None and rec.directory.parent == tmp_path
    assert rec.recommend_batch(users=[11, 12], k=4) == Recommender.load(model_dir).recommend_batch(users=[11, 12], k=4)
    # a run artifact or a numbered version never changes: the second load reuses the download (and its index)
    index_file = rec.directory / "index-flat.faiss"
    stamp = index_file.stat().st_mtime_ns
    again = Recommender.load(uri, tracking_uri=tracking_uri, cache_dir=tmp_path)
    assert again.directory == rec.directory and index_file.stat().st_mtime_ns == stamp


def test_tracking_uri_comes_from_the_environment(tiny_store: tuple[str, str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tracking_uri, run_id, _ = tiny_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    assert Recommender.load(f"runs:/{run_id}/model", cache_dir=tmp_path).n_items == 30


def test_bad_mlflow_uris_are_model_load_errors(tiny_store: tuple[str, str, Path], tmp_path: Path) -> None:
    tracking_uri, run_id, _ = tiny_store
    with pytest.raises(ModelLoadError, match="models:/tiny/7: cannot download it from MLflow"):
        Recommender.load("models:/tiny/7", tracking_uri=tracking_uri, cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="not a recsys model directory"):
        Recommender.load(f"runs:/{run_id}/model/manifest.json", tracking_uri=tracking_uri, cache_dir=tmp_path)


def test_pyfunc_logged_by_log_pyfunc_predicts(tiny_store: tuple[str, str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc

    monkeypatch.chdir(tmp_path)

    from recsys.retrieval.pyfunc import log_pyfunc

    tracking_uri, _, model_dir = tiny_store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = log_pyfunc(model_dir, tracking_uri, experiment="tiny-pyfunc")
    assert uri.startswith("models:/m-")  # a logged model
    assert "MLFLOW_TRACKING_URI" not in os.environ  # set for the call only
    assert not (tmp_path / "mlruns").exists()  # a new experiment's artifacts go beside the store, not into ./mlruns
    assert (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts" / "tiny-pyfunc").is_dir()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # pyfunc.load_model reads the store from here
    try:
        model = mlflow.pyfunc.load_model(uri, dst_path=str(tmp_path))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    out = model.predict(pd.DataFrame({"user_id": [12, None], "items": [None, [390, 380]], "k": [3, 2]}))
    assert list(out.columns) == ["query", "rank", "item_id", "title", "score"]
    assert out["query"].tolist() == [0, 0, 0, 1, 1] and out["rank"].tolist() == [1, 2, 3, 1, 2]
    rec = Recommender.load(model_dir)
    assert out[out["query"] == 0]["item_id"].tolist() == [r.item_id for r in rec.recommend(user=12, k=3)]
    assert out[out["query"] == 1]["item_id"].tolist() == [r.item_id for r in rec.recommend(history=[390, 380], k=2)]


# -- a really trained model -------------------------------------------------------------------------------------


def test_training_logs_model_and_pyfunc_loadable_by_uri(trained: tuple[Path, object], tmp_path: Path) -> None:
    import mlflow.pyfunc

    store, result = trained
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    by_run = Recommender.load(f"runs:/{result.run_id}/model", tracking_uri=tracking_uri, cache_dir=tmp_path)
    by_name = Recommender.load("models:/recsys-retrieval-test/1", tracking_uri=tracking_uri, cache_dir=tmp_path)
    by_dir = Recommender.load(result.model_dir)
    users = [1, 2, 3, 610]
    assert by_run.recommend_batch(users=users) == by_name.recommend_batch(users=users) == by_dir.recommend_batch(users=users)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/pyfunc", dst_path=str(tmp_path))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    out = pyfunc.predict(pd.DataFrame({"user_id": users}))
    assert out.groupby("query")["item_id"].apply(list).tolist() == [[r.item_id for r in recs]
                                                                      for recs in by_dir.recommend_batch(users=users)]


def test_exact_index_equals_torch_topk_on_a_trained_model(trained: tuple[Path, object]) -> None:
    _, result = trained
    rec = Recommender.load(result.model_dir)
    users = list(range(1, 611, 7))
    histories = [np.asarray([rec._item_idx[i] for i in rec.history(u)]) for u in users]
    with torch.no_grad():
        scores = rec._model.score(left_pad(histories, rec._max_len))  # [users, n_items + 1], the eval contract
    scores[:, 0] = -torch.inf
    for row, history in enumerate(histories):
        scores[row, torch.as_tensor(history)] = -torch.inf
    want = torch.topk(scores, 10, dim=1)
    got = rec.recommend_batch(users=users, k=10)
    got_idx = np.asarray([[rec._item_idx[r.item_id] for r in recs] for recs in got])
    got_scores = np.asarray([[r.score for r in recs] for recs in got])
    np.testing.assert_allclose(got_scores, want.values.numpy(), rtol=1e-4, atol=1e-5)
    # same items in the same order, up to exact ties (which torch and FAISS may order differently)
    mismatch = got_idx != want.indices.numpy()
    assert np.all(np.isclose(got_scores[mismatch], want.values.numpy()[mismatch], atol=1e-6))
    assert mismatch.mean() < 0.01


# `mlflow models serve` of the registered version: test_mlflow_registry.py
