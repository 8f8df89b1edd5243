"""The model contract (recsys.models.base), checked for EVERY entry of the model registry: a new model gets
these tests by being registered.

Each model is trained for real by `recsys.training.train` (a few steps on a small custom log with item
titles, tracking off), saved, loaded back as a `Recommender`, and asked for recommendations; its scores are
checked against the contract's inner product.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
import torch

from recsys.models import MODELS, SequenceModel, build_model
from recsys.models.base import BATCHES, scatter_history

N_USERS, N_ITEMS = 40, 30
# Float tolerance: `score` is the same inner product computed in one matmul against the whole table, while
# the check below takes the user vectors and the table separately; only summation order may differ.
ATOL = 1e-5


@pytest.fixture(scope="module")
def log_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """interactions.csv (40 users, 8-14 items each, increasing timestamps) and items.csv with titles."""
    folder = tmp_path_factory.mktemp("contract-log")
    rng = random.Random(7)
    rows = []
    for user in range(N_USERS):
        start = 1_600_000_000 + 86_400 * user
        for step, item in enumerate(rng.sample(range(1, N_ITEMS + 1), rng.randint(8, 14))):
            rows.append((f"u{user}", f"i{item}", start + 3_600 * step))
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_csv(folder / "log.csv")
    genres = ["comedy", "drama", "thriller"]
    pl.DataFrame({"item_id": [f"i{i}" for i in range(1, N_ITEMS + 1)],
                  "title": [f"A {genres[i % 3]} about {i} things" for i in range(1, N_ITEMS + 1)]}
                 ).write_csv(folder / "items.csv")
    return folder / "log.csv", folder / "items.csv"


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request: pytest.FixtureRequest, log_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """(model name, TrainResult) of a short real training run of each registered model."""
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    name = request.param
    log, items = log_files
    runs = tmp_path_factory.mktemp(f"contract-{name}")
    cfg = load_run_config(None, [
        "data.name=custom", f"data.interactions_file={log}", f"data.items_file={items}", "data.text_columns=[title]",
        f"data.cache_dir={runs / 'cache'}", f"model.name={name}", "model.max_len=8", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.batch_size=16", "trainer.patience=0", "trainer.threads=1",
        "trainer.progress_bar=false", "tracking.enabled=false", f"tracking.output_dir={runs}"])
    return name, train(cfg)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_is_built_as_the_contract_says(name: str) -> None:
    model_cls, config_cls = MODELS[name]
    assert issubclass(model_cls, SequenceModel)
    if model_cls.needs_item_texts:
        pytest.importorskip("transformers", reason="text models need the text extra: pip install -e '.[text]'")
    model = build_model(name, config_cls(max_len=8), N_ITEMS)
    assert model.n_items == N_ITEMS and model.max_len == 8
    assert model.objective().batches in BATCHES
    with pytest.raises(ValueError, match="exceeds max_len 8"):
        model.check_history(torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="timestamps must have the items' shape"):
        model.check_history(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4))


def test_training_saving_and_recommending_follow_the_contract(trained) -> None:
    from recsys.retrieval import Recommender

    name, result = trained
    assert result.model_dir is not None and (result.model_dir / "manifest.json").is_file()
    assert 0.0 <= result.metrics["test_ndcg@10"] <= 1.0
    rec = Recommender.load(result.model_dir)
    model = rec._model
    assert isinstance(model, SequenceModel)

    # score == user_vector @ item_vectors().T, and column 0 (padding) scores 0
    histories = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12, 13, 14], [0] * 7 + [30]])
    with torch.no_grad():
        scores = model.score(histories)
        expected = model.user_vector(histories) @ model.item_vectors().T
        extra = model.history_scores(histories)  # repeat-aware models: a term on the history items only
        if extra is not None:
            expected = expected + scatter_history(extra, histories, N_ITEMS + 1)
    assert scores.shape == (3, N_ITEMS + 1)
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(scores[:, 0], torch.zeros(3), atol=ATOL, rtol=0)

    # a known user: k items, best first, none of the user's own history
    user = "u3"
    seen = set(rec.history(user))
    top = rec.recommend(user=user, k=5, exclude_seen=True)
    assert len(top) == 5 and not seen & {r.item_id for r in top}
    assert [r.score for r in top] == sorted((r.score for r in top), reverse=True)
    # a raw history ranks as the model scores it (the FAISS flat index is exact)
    history = ["i1", "i2", "i3"]
    raw = rec.recommend(history=history, k=3, exclude_seen=True)
    idx = rec._known_idx(history)
    with torch.no_grad():
        model_scores = model.score(torch.tensor([idx.tolist()]))[0]
    model_scores[0] = float("-inf")
    model_scores[torch.tensor(idx.tolist())] = float("-inf")  # exclude_seen True: the history term is moot
    best = model_scores.topk(3)
    assert [r.score for r in raw] == pytest.approx(best.values.tolist(), abs=ATOL)


def test_a_saved_model_loads_back_to_the_same_scores(trained) -> None:
    from recsys.retrieval import Recommender

    _, result = trained
    first, second = Recommender.load(result.model_dir)._model, Recommender.load(result.model_dir)._model
    histories = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        # same weights, same operations, same process: equal exactly
        assert torch.equal(first.score(histories), second.score(histories))
