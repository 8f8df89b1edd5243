"""Models for retrieval tests: a tiny random SASRec saved with `save_model` (real files, milliseconds), and
one real training run on ml-latest-small cut short, tracked in a real MLflow store (once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import torch

from recsys.models import SASRec, SASRecConfig
from recsys.saved_model import SavedModel, save_model

N_ITEMS = 30
ITEM_IDS = [100 + 10 * i for i in range(N_ITEMS)]  # original ids differ from item_idx 1..30
HISTORIES = {  # user_id -> original item ids, oldest first
    11: [100, 110, 120],
    12: [390, 380, 370, 360, 350, 340],
    13: [200],
    14: ITEM_IDS[:12],
    15: ITEM_IDS[:28],  # only 2 items left unseen
}
CONFIG = {"model": {"name": "sasrec", "max_len": 8, "hidden": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0}}


def tiny_saved_model(seed: int = 0) -> SavedModel:
    """A randomly initialised SASRec over 30 items and 5 users, with the tables a saved model holds."""
    torch.manual_seed(seed)
    cfg = SASRecConfig(**{k: v for k, v in CONFIG["model"].items() if k != "name"})
    model = SASRec(N_ITEMS, cfg)
    item_map = pl.DataFrame({"item_idx": pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int32),
                             "item_id": pl.Series(ITEM_IDS, dtype=pl.Int64)})
    titles = [None if i % 7 == 0 else f"Item {item}" for i, item in enumerate(ITEM_IDS)]
    items = item_map.with_columns(pl.Series("title", titles, dtype=pl.String))
    users = sorted(HISTORIES)
    user_map = pl.DataFrame({"user_idx": pl.Series(range(1, len(users) + 1), dtype=pl.Int32),
                             "user_id": pl.Series(users, dtype=pl.Int64)})
    idx = {item: i + 1 for i, item in enumerate(ITEM_IDS)}
    histories = pl.DataFrame({"user_idx": pl.Series(range(1, len(users) + 1), dtype=pl.Int32),
                              "items": pl.Series([[idx[i] for i in HISTORIES[u]] for u in users],
                                                 dtype=pl.List(pl.Int32))})
    return SavedModel(model_name="sasrec", config=CONFIG, state_dict=model.state_dict(), n_items=N_ITEMS,
                      item_map=item_map, user_map=user_map, items=items, histories=histories,
                      metrics={}, extra={"dataset": "tiny"})


@pytest.fixture(scope="session")
def tiny_saved() -> SavedModel:
    return tiny_saved_model()


@pytest.fixture
def tiny_dir(tiny_saved: SavedModel, tmp_path: Path) -> Path:
    """A fresh saved model directory (tests may add, break or delete files in it)."""
    return save_model(tiny_saved, tmp_path / "model")


@pytest.fixture(scope="session")
def tiny_rec(tiny_saved: SavedModel):
    from recsys.retrieval import Recommender

    return Recommender.from_saved(tiny_saved)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, object]]:
    """(store folder, TrainResult) of a 1-epoch, 3-batch SASRec on ml-latest-small (last 30 items per user),
    logged to sqlite in the store folder and registered as 'recsys-retrieval-test'."""
    from recsys.cli import log_pyfunc_flavour
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    store = tmp_path_factory.mktemp("store")
    overrides = ["data.max_history=30", "model.max_len=30", "model.hidden=32", "trainer.progress_bar=false",
                 "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.patience=0",
                 f"tracking.output_dir={store / 'runs'}", f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                 "tracking.register_as=recsys-retrieval-test"]
    threads = torch.get_num_threads()
    cfg = load_run_config(Path(__file__).parents[1] / "configs" / "sasrec_small.yaml", overrides)
    result = train(cfg, after_logging=log_pyfunc_flavour)  # as `recsys train` does
    yield store, result
    torch.set_num_threads(threads)
