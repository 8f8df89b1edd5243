"""Timestamps from a saved model's histories and from requests reach a model that reads time (HSTU), through
the Recommender, the HTTP server and the pyfunc, and change what it recommends as the model says they should."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import polars as pl
import pytest
import torch

from recsys.data import schema
from recsys.models import HSTU, HSTUConfig
from recsys.retrieval import Recommender
from recsys.saved_model import SavedModel, save_model
from recsys.serving.http import create_app

from tests.processes import TEST_TIMEOUT_S, app_in_thread

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

N_ITEMS = 20
HISTORIES = {7: [1, 2, 3, 4], 8: [5, 6]}  # user_id -> item ids (= item_idx here), oldest first
TIMES = {7: [1_000_000, 1_000_060, 1_003_600, 1_090_000], 8: [2_000_000, 2_000_001]}
DAY = 86_400.0
# Float tolerance: the Recommender scores through FAISS (float32 inner products of the same vectors).
ATOL = 1e-4


def time_aware_saved_model() -> SavedModel:
    """A random HSTU over 20 items whose time-gap biases are large enough to change its rankings."""
    torch.manual_seed(0)
    config = HSTUConfig(max_len=8, hidden=16, n_layers=1, n_heads=1, dropout=0.0)
    model = HSTU(N_ITEMS, config)
    with torch.no_grad():
        for block in model.blocks:
            block.time_weight.normal_(0, 3.0)
    users = sorted(HISTORIES)
    item_map = pl.DataFrame({schema.ITEM_IDX: pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int32),
                             schema.ITEM_ID: pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int64)})
    user_map = pl.DataFrame({schema.USER_IDX: pl.Series(range(1, len(users) + 1), dtype=pl.Int32),
                             schema.USER_ID: pl.Series(users, dtype=pl.Int64)})
    histories = pl.DataFrame({
        schema.USER_IDX: pl.Series(range(1, len(users) + 1), dtype=pl.Int32),
        schema.ITEMS: pl.Series([HISTORIES[u] for u in users], dtype=pl.List(pl.Int32)),
        schema.TIMESTAMPS: pl.Series([TIMES[u] for u in users], dtype=pl.List(pl.Int64))})
    cfg = {"model": {"name": "hstu", "max_len": 8, "hidden": 16, "n_layers": 1, "n_heads": 1, "dropout": 0.0}}
    return SavedModel(model_name="hstu", config=cfg, state_dict=model.state_dict(), n_items=N_ITEMS,
                      item_map=item_map, user_map=user_map, items=item_map, histories=histories, metrics={},
                      extra={"dataset": "tiny"})


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return Recommender.load(save_model(time_aware_saved_model(), tmp_path_factory.mktemp("time") / "model"))


def model_top(rec: Recommender, items: list[int], times: list[float] | None, at: float | None, k: int) -> list[int]:
    """The model's own top k (history excluded), computed without the Recommender."""
    model = rec._model
    with torch.no_grad():
        scores = model.score(torch.tensor([items]), None if times is None else torch.tensor([times], dtype=torch.float64),
                             None if at is None else torch.tensor([at], dtype=torch.float64))[0]
    scores[0] = float("-inf")
    scores[torch.tensor(items)] = float("-inf")
    return scores.topk(k).indices.tolist()


def test_the_query_time_changes_what_a_time_model_recommends(rec: Recommender) -> None:
    items, times = HISTORIES[7], [float(t) for t in TIMES[7]]
    soon = rec.recommend(history=items, timestamps=times, at=times[-1] + 60, k=5)
    later = rec.recommend(history=items, timestamps=times, at=times[-1] + 300 * DAY, k=5)
    assert [r.item_id for r in soon] == model_top(rec, items, times, times[-1] + 60, 5)
    assert [r.item_id for r in later] == model_top(rec, items, times, times[-1] + 300 * DAY, 5)
    assert [r.score for r in soon] != pytest.approx([r.score for r in later], abs=ATOL)
    # only item ids: the model's time-free path, as the contract promises
    assert [r.item_id for r in rec.recommend(history=items, k=5)] == model_top(rec, items, None, None, 5)


def test_a_known_user_is_encoded_with_the_saved_timestamps(rec: Recommender) -> None:
    items, times = HISTORIES[7], [float(t) for t in TIMES[7]]
    at = times[-1] + DAY
    by_user = rec.recommend(user=7, at=at, k=5)
    by_history = rec.recommend(history=items, timestamps=times, at=at, k=5)
    assert by_user == by_history
    assert [r.item_id for r in rec.recommend(user=7, k=5)] == model_top(rec, items, times, None, 5)


def test_batches_give_each_input_its_own_query_time(rec: Recommender) -> None:
    items, times = HISTORIES[7], [float(t) for t in TIMES[7]]
    ats = [times[-1] + 60, times[-1] + 300 * DAY]
    batch = rec.recommend_batch(histories=[items, items], timestamps=[times, times], at=ats, k=5)
    assert batch == [rec.recommend(history=items, timestamps=times, at=at, k=5) for at in ats]


def test_unknown_items_take_their_timestamps_with_them(rec: Recommender) -> None:
    import warnings

    from recsys.retrieval import UnknownItemsWarning

    times = [float(t) for t in TIMES[7]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownItemsWarning)
        with_unknown = rec.recommend(history=[1, 999, 2, 3, 4], timestamps=[times[0], 5.0, *times[1:]], at=2e6, k=5)
    assert with_unknown == rec.recommend(history=[1, 2, 3, 4], timestamps=times, at=2e6, k=5)


def test_the_pyfunc_passes_timestamps_and_at(rec: Recommender) -> None:
    import pandas as pd

    from recsys.retrieval.pyfunc import predict_frame

    items, times = HISTORIES[7], [float(t) for t in TIMES[7]]
    at = times[-1] + 300 * DAY
    out = predict_frame(rec, pd.DataFrame([{"items": items, "timestamps": times, "at": at}]), default_k=5)
    assert out["item_id"].tolist() == model_top(rec, items, times, at, 5)


@pytest.fixture(scope="module")
def server(rec: Recommender) -> Iterator[str]:
    with app_in_thread(create_app(rec)) as url:
        yield url


def test_http_requests_carry_timestamps_and_at(server: str, rec: Recommender) -> None:
    items, times = HISTORIES[7], [float(t) for t in TIMES[7]]
    at = times[-1] + 300 * DAY
    with httpx.Client(base_url=server, timeout=10) as client:
        response = client.post("/recommend", json={"items": items, "timestamps": times, "at": at, "k": 5})
        assert response.status_code == 200, response.text
        assert [r["item_id"] for r in response.json()["items"]] == model_top(rec, items, times, at, 5)
        by_user = client.post("/recommend", json={"user_id": 7, "at": at, "k": 5})
        assert by_user.json()["items"] == response.json()["items"]
        batch = client.post("/recommend/batch", json={"histories": [items], "timestamps": [times], "at": at, "k": 5})
        assert batch.json()["results"][0]["items"] == response.json()["items"]
    assert np.isfinite([r["score"] for r in response.json()["items"]]).all()


def test_at_without_the_historys_timestamps_is_a_one_line_error(server: str, rec: Recommender) -> None:
    """A time context is the gap from each history item to `at`: without the items' times there is none, and
    answering as if `at` had not been given would silently answer another question."""
    from recsys.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=r"^at needs the history's timestamps \(one per item\)"):
        rec.recommend(history=HISTORIES[7], at=2e6, k=5)
    with httpx.Client(base_url=server, timeout=10) as client:
        response = client.post("/recommend", json={"items": HISTORIES[7], "at": 2e6, "k": 5})
    assert response.status_code == 422, response.text
    assert "at needs the history's timestamps" in response.text


def test_the_recommend_command_takes_timestamps_and_at(rec: Recommender, tmp_path_factory: pytest.TempPathFactory,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from recsys.cli import main

    model_dir = save_model(time_aware_saved_model(), tmp_path_factory.mktemp("cli") / "model")
    items, times = HISTORIES[7], [float(t) for t in TIMES[7]]
    at = times[-1] + 300 * DAY
    assert main(["recommend", "--model", str(model_dir), "--items", ",".join(map(str, items)), "--timestamps",
                 ",".join(map(str, times)), "--at", str(at), "-k", "5", "--format", "json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)["items"]] == model_top(rec, items, times, at, 5)
    # an unknown item is skipped with its own timestamp
    assert main(["recommend", "--model", str(model_dir), "--items", ",".join(map(str, [999, *items])),
                 "--timestamps", ",".join(map(str, [5.0, *times])), "--at", str(at), "-k", "5", "--format",
                 "json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)["items"]] == model_top(rec, items, times, at, 5)
    assert main(["recommend", "--model", str(model_dir), "--user", "7", "--at", str(at), "-k", "5", "--format",
                 "json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)["items"]] == model_top(rec, items, times, at, 5)


@pytest.mark.parametrize(("extra", "message"), [
    (["--items", "1,2", "--timestamps", "5"], "--timestamps: 1 timestamps for 2 items; give one per item"),
    (["--items", "1,2", "--timestamps", "5,soon"], "--timestamps: 'soon' is not a number of seconds"),
    (["--user", "7", "--timestamps", "5"], "--timestamps go with --items; a known user's come from the saved model"),
    (["--items", "1,2", "--at", "5"], "at needs the history's timestamps (one per item)"),
])
def test_the_recommend_commands_bad_times_are_one_line_errors(
        tmp_path_factory: pytest.TempPathFactory, extra: list[str], message: str) -> None:
    model_dir = save_model(time_aware_saved_model(), tmp_path_factory.mktemp("bad") / "model")
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "recommend", "--model", str(model_dir), *extra],
                          capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    assert done.returncode != 0
    assert message in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr
