"""Live histories for real: POST /events into a SQLite history store in tmp_path through a uvicorn server in a
thread, read back by /recommend and by `Recommender` (real processes: test_events_processes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from recsys.errors import ConfigError, DataError
from recsys.history_store import Event, HistoryStore, HistoryStoreConfig
from recsys.retrieval import Recommender
from recsys.saved_model import save_model
from recsys.serving.http import MAX_EVENTS, JSONFramingErrors, create_app
from tests.processes import TEST_TIMEOUT_S, app_in_thread
from tests.retrieval.conftest import HISTORIES, ITEM_IDS

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

MAX_LEN = 8  # tiny_saved_model's model.max_len




@pytest.fixture
def served(model_dir: Path, tmp_path: Path) -> Iterator[tuple[httpx.Client, Recommender]]:
    """A server over a fresh store (users precomputed: their vectors must give way to new events)."""
    rec = Recommender.load(model_dir)
    rec.use_history_store(HistoryStore(tmp_path / "events.db", HistoryStoreConfig(max_per_user=MAX_LEN)))
    rec.precompute_user_vectors()
    with app_in_thread(create_app(rec), http=JSONFramingErrors) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c, rec
    assert rec.history_store is not None
    rec.history_store.close()


def top(client: httpx.Client, user: object, k: int = 5) -> list[object]:
    response = client.post("/recommend", json={"user_id": user, "k": k})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_events_change_the_next_recommendation(served: tuple[httpx.Client, Recommender],
                                               plain: Recommender) -> None:
    client, _ = served
    before = top(client, 12)
    assert before == [r.item_id for r in plain.recommend(user=12, k=5)]  # the precomputed vector, no events yet
    new = [100, 110, 120, 130]
    response = client.post("/events", json={"events": [{"user_id": 12, "item_id": item} for item in new]})
    assert response.status_code == 200 and response.json() == {"stored": 4, "skipped_items": []}
    after = top(client, 12)
    assert after == [r.item_id for r in plain.recommend(history=HISTORIES[12] + new, k=5)]
    assert after != before  # the events changed what the model sees (the model's max_len is 8)
    # one more event, the single-event form, and the string spelling of the same user
    assert client.post("/events", json={"user_id": "12", "item_id": "140"}).json()["stored"] == 1
    assert top(client, 12) == [r.item_id for r in plain.recommend(history=HISTORIES[12] + new + [140], k=5)]


def test_an_unknown_user_becomes_known_through_events(served: tuple[httpx.Client, Recommender],
                                                     plain: Recommender) -> None:
    client, rec = served
    assert client.post("/recommend", json={"user_id": "newcomer"}).status_code == 404
    events = [{"user_id": "newcomer", "item_id": item, "timestamp": 1_600_000_000 + n}
              for n, item in enumerate([300, 310, 320])]
    assert client.post("/events", json={"events": events}).status_code == 200
    assert top(client, "newcomer") == [r.item_id for r in plain.recommend(history=[300, 310, 320], k=5)]
    assert rec.history("newcomer") == [300, 310, 320]
    batch = client.post("/recommend/batch", json={"user_ids": ["newcomer", 11], "k": 5}).json()["results"]
    assert [[i["item_id"] for i in row["items"]] for row in batch] == [
        top(client, "newcomer"), [r.item_id for r in plain.recommend(user=11, k=5)]]


def test_retention_keeps_the_newest_events_of_each_user(served: tuple[httpx.Client, Recommender]) -> None:
    client, rec = served
    items = ITEM_IDS[:20]
    for item in items:  # one commit each: the bound holds after every commit, not only after a big one
        assert client.post("/events", json={"user_id": "busy", "item_id": item}).status_code == 200
    assert rec.history_store is not None
    assert rec.history_store.count("busy") == MAX_LEN
    assert rec.history("busy") == items[-MAX_LEN:]


def test_the_store_holds_at_most_max_events_dropping_the_oldest(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "e.db", HistoryStoreConfig(max_per_user=100, max_events=10))
    store.append([Event(f"u{n % 3}", str(n), float(n)) for n in range(25)])
    store.append([Event("u9", "x", 99.0)])
    assert store.count() == 10 == sum(store.count(f"u{n}") for n in (0, 1, 2, 9))
    kept = store.recent(["u0", "u1", "u2", "u9"])
    assert sorted(t for history in kept.values() for t in history.timestamps) == [float(n) for n in range(16, 25)] + [99.0]
    store.close()


@pytest.mark.parametrize("body, message", [
    ({"user_id": 1, "item_id": 9999}, "the event: item_id 9999 is not in the model's catalogue (30 items); nothing was stored"),
    ({"events": [{"user_id": 1, "item_id": 100}, {"user_id": 1, "item_id": "x"}]},
     "events[1]: item_id 'x' is not in the model's catalogue"),
    ({"user_id": 1, "item_id": 100, "timestamp": 1.7e12}, "the event: timestamp 1700000000000.0 is more than 86400 s after"),
    ({"user_id": 1, "item_id": 100, "timestamp": -5}, "the event: timestamp -5.0 is negative"),
    ({"user_id": 1, "item_id": 100, "timestamp": "noon"}, "valid number"),
    ({"user_id": 1}, "an event needs both user_id and item_id"),
    ({"user_id": 1, "item_id": 100, "events": [{"user_id": 1, "item_id": 100}]}, "give either user_id and item_id"),
    ({}, "give either user_id and item_id"),
    ({"events": []}, "at least 1 item"),
    ({"events": [{"user_id": 1, "item_id": 100}] * (MAX_EVENTS + 1)}, f"at most {MAX_EVENTS} items"),
    ({"events": [{"user_id": 1, "item_id": 100, "colour": "red"}]}, "Extra inputs are not permitted"),
    ({"user_id": [1], "item_id": 100}, "valid"),
    ({"user_id": True, "item_id": 100}, "valid"),
])
def test_bad_events_are_one_line_422s_and_nothing_is_stored(served: tuple[httpx.Client, Recommender],
                                                            body: object, message: str) -> None:
    client, rec = served
    response = client.post("/events", json=body)
    assert response.status_code == 422, response.text
    assert message in response.text and "\n" not in response.text
    assert rec.history_store is not None and rec.history_store.count() == 0


def test_nan_timestamps_are_refused(served: tuple[httpx.Client, Recommender]) -> None:
    client, _ = served
    response = client.post("/events", content=b'{"user_id": 1, "item_id": 100, "timestamp": NaN}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and "finite number" in response.text


def test_unknown_items_can_be_skipped(served: tuple[httpx.Client, Recommender]) -> None:
    client, rec = served
    body = {"events": [{"user_id": "s", "item_id": i} for i in (100, 7, "x", 110)], "on_unknown": "skip"}
    assert client.post("/events", json=body).json() == {"stored": 2, "skipped_items": [7, "x"]}
    assert rec.history("s") == [100, 110]


def test_concurrent_writers_lose_nothing(served: tuple[httpx.Client, Recommender]) -> None:
    client, rec = served
    posts = [(f"w{n % 8}", ITEM_IDS[n % len(ITEM_IDS)]) for n in range(400)]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda p: client.post("/events", json={"user_id": p[0], "item_id": p[1]}).status_code,
                              posts))
    assert codes == [200] * len(posts)
    assert rec.history_store is not None and rec.history_store.count() == MAX_LEN * 8  # 50 each, 8 kept


def test_a_server_without_a_store_says_how_to_get_one(plain: Recommender) -> None:
    with app_in_thread(create_app(plain), http=JSONFramingErrors) as url:
        response = httpx.post(f"{url}/events", json={"user_id": 1, "item_id": 100})
    assert response.status_code == 422 and "start it with --history-store PATH" in response.text


def test_a_file_that_is_not_a_store_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not sqlite")
    with pytest.raises(DataError, match="notes.db: cannot open the history store"):
        HistoryStore(tmp_path / "notes.db")
    with pytest.raises(ConfigError, match="no history store there"):
        HistoryStore(tmp_path / "absent.db", create=False)


def test_serve_and_recommend_refuse_store_options_that_cannot_work(model_dir: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from recsys.cli import main

    store = tmp_path / "events.db"
    assert main(["serve", "--model", str(model_dir), "--history-store", str(store), "--history-max-per-user", "4"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --history-max-per-user 4 is shorter than the model's max_len "
                                              "8: keep at least as many events as it reads")
    assert main(["recommend", "--model", str(model_dir), "--items", "100", "--history-store", str(store)]) == 2
    assert "--history-store goes with --user" in capsys.readouterr().err


def test_stored_timestamps_reach_a_model_that_reads_time(tmp_path: Path) -> None:
    from tests.retrieval.test_time_path import HISTORIES as TIMED, TIMES, time_aware_saved_model

    rec = Recommender.load(save_model(time_aware_saved_model(), tmp_path / "model"))
    store = HistoryStore(tmp_path / "events.db")
    rec.use_history_store(store)
    new_times = [float(TIMES[7][-1] + 3600), float(TIMES[7][-1] + 7200)]
    store.append([Event("7", "9", new_times[0]), Event("7", "10", new_times[1]), Event("new", "11", 5.0e6)])
    at = new_times[-1] + 60
    saved_times = [float(t) for t in TIMES[7]]
    # ATOL as test_time_path: float32 inner products through FAISS; the same vectors on both sides
    for user, items, times in (("7", TIMED[7] + [9, 10], saved_times + new_times), ("new", [11], [5.0e6])):
        got = rec.recommend(user=user, k=5, at=at)
        want = rec.recommend(history=items, timestamps=times, at=at, k=5)
        assert [r.item_id for r in got] == [r.item_id for r in want]
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
    store.close()


def test_a_store_held_by_another_writer_past_the_timeout_is_a_503_with_nothing_stored(model_dir: Path,
                                                                                     tmp_path: Path) -> None:
    import sqlite3

    rec = Recommender.load(model_dir)
    store = HistoryStore(tmp_path / "events.db", HistoryStoreConfig(max_per_user=MAX_LEN, busy_timeout_s=0.2))
    rec.use_history_store(store)
    other = sqlite3.connect(tmp_path / "events.db", isolation_level=None)  # another process's writer, say
    with app_in_thread(create_app(rec), http=JSONFramingErrors) as url:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        response = httpx.post(f"{url}/events", json={"user_id": 1, "item_id": 100}, timeout=30)
        other.execute("ROLLBACK")
        assert response.status_code == 503, response.text
        assert "could not store 1 events (database is locked)" in response.text and "\n" not in response.text
        assert store.count() == 0
        # the lock gone, the same server takes events again
        assert httpx.post(f"{url}/events", json={"user_id": 1, "item_id": 100}, timeout=30).status_code == 200
    assert store.count() == 1
    other.close()
    store.close()
