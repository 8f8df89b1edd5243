"""The HTTP server for real: uvicorn on a free localhost port in a thread, queried with httpx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from recsys.retrieval import Recommender
from recsys.saved_model import save_model
from recsys.serving.http import MAX_BATCH, MAX_BODY_BYTES, MAX_ITEMS, MAX_K, create_app

from tests.processes import TEST_TIMEOUT_S, app_in_thread
from tests.retrieval.conftest import HISTORIES, tiny_saved_model

# The first test also waits for the server fixture (up to START_TIMEOUT_S): a longer limit than that wait.
pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return Recommender.load(save_model(tiny_saved_model(), tmp_path_factory.mktemp("http") / "model"))


@pytest.fixture(scope="module")
def server(rec: Recommender) -> Iterator[str]:
    with app_in_thread(create_app(rec)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as c:
        yield c


def test_health(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "sasrec", "n_items": 30, "n_users": 5,
                               "format_version": 1, "index": "flat", "compiled": False}


def test_recommend_by_user_equals_the_python_api(client: httpx.Client, rec: Recommender) -> None:
    response = client.post("/recommend", json={"user_id": 12, "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "sasrec" and body["skipped_items"] == []
    want = rec.recommend(user=12, k=3)
    assert [(i["item_id"], i["title"]) for i in body["items"]] == [(r.item_id, r.title) for r in want]
    assert [i["score"] for i in body["items"]] == pytest.approx([r.score for r in want])


def test_recommend_by_items_reports_skipped_ones(client: httpx.Client, rec: Recommender) -> None:
    body = client.post("/recommend", json={"items": [390, 7, "x", 380], "k": 2, "deny": [100]}).json()
    assert body["skipped_items"] == [7, "x"]
    assert [i["item_id"] for i in body["items"]] == [r.item_id for r in rec.recommend(history=[390, 380], k=2,
                                                                                       deny=[100])]
    response = client.post("/recommend", json={"items": [390, 7], "on_unknown": "error"})
    assert response.status_code == 404 and "unknown item ids [7]" in response.json()["detail"]


def test_options_reach_the_recommender(client: httpx.Client, rec: Recommender) -> None:
    body = client.post("/recommend", json={"user_id": 14, "k": 30, "exclude_seen": False}).json()
    assert set(HISTORIES[14]) <= {i["item_id"] for i in body["items"]}
    body = client.post("/recommend", json={"user_id": 11, "k": 2, "allow": [200, 210, 220]}).json()
    assert [i["item_id"] for i in body["items"]] == [r.item_id for r in rec.recommend(user=11, k=2,
                                                                                      allow=[200, 210, 220])]


def test_batch_equals_single_requests(client: httpx.Client) -> None:
    batch = client.post("/recommend/batch", json={"user_ids": [11, 12, 13], "k": 2}).json()
    singles = [client.post("/recommend", json={"user_id": u, "k": 2}).json()["items"] for u in [11, 12, 13]]
    got = [r["items"] for r in batch["results"]]
    # Same items in order; scores to float32 rounding (rel 1e-5): a batched and a single matrix product sum in
    # another order (0.0011838972 vs 0.0011839084 on an AMD EPYC). The fixture's scores are far apart: no ties.
    assert [[i["item_id"] for i in rows] for rows in got] == [[i["item_id"] for i in rows] for rows in singles]
    assert [[i["score"] for i in rows] for rows in got] == [
        pytest.approx([i["score"] for i in rows], rel=1e-5, abs=1e-7) for rows in singles]
    batch = client.post("/recommend/batch", json={"histories": [[100], [390, 9999]], "k": 1}).json()
    assert [r["skipped_items"] for r in batch["results"]] == [[], [9999]]


def test_item_lookup(client: httpx.Client) -> None:
    assert client.get("/items/110").json() == {"item_id": 110, "title": "Item 110"}
    assert client.get("/items/999").status_code == 404


@pytest.mark.parametrize("body, status, message", [
    ({"user_id": 99}, 404, "user_id 99 is not a known user"),
    ({"user_id": 11, "k": 0}, 422, "greater than or equal to 1"),
    ({"user_id": 11, "k": -5}, 422, "greater than or equal to 1"),
    ({"user_id": 11, "k": MAX_K + 1}, 422, f"less than or equal to {MAX_K}"),
    ({"user_id": 11, "k": "10"}, 422, "valid integer"),
    ({"user_id": 11, "k": 2.5}, 422, "valid integer"),
    ({"user_id": [11]}, 422, ""),
    ({"user_id": True}, 422, ""),
    ({"items": "100,110"}, 422, "valid list"),
    ({"items": [{"id": 1}]}, 422, ""),
    ({"items": []}, 422, "history is empty"),
    ({"items": [1, 2]}, 422, "history is empty after skipping 2 unknown item ids"),
    ({"user_id": 15, "k": 3}, 422, "k=3 but only 2 items"),
    ({}, 422, "exactly one of user_id or items"),
    ({"user_id": 11, "items": [100]}, 422, "exactly one of user_id or items"),
    ({"user_id": 11, "colour": "red"}, 422, "Extra inputs are not permitted"),
    ({"user_id": 11, "on_unknown": "ignore"}, 422, ""),
    ({"items": list(range(MAX_ITEMS + 1))}, 422, f"at most {MAX_ITEMS} items"),
    ({"items": [100, 110], "timestamps": [1.0]}, 422, "timestamps need items, one per item"),
    ({"user_id": 11, "timestamps": [1.0]}, 422, "timestamps need items, one per item"),
    ({"items": [100], "timestamps": ["noon"]}, 422, "valid number"),
    ({"user_id": 11, "at": "now"}, 422, "valid number"),
])
def test_bad_requests_get_4xx_with_a_message(client: httpx.Client, body: object, status: int, message: str) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_malformed_json_and_other_bodies(client: httpx.Client) -> None:
    for content in (b"{not json", b"", b"[1, 2]", b"null", "\u00ff".encode("latin-1")):
        response = client.post("/recommend", content=content, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (content, response.text)  # 422, or 400 for undecodable bytes
    response = client.post("/recommend/batch", json={"user_ids": list(range(MAX_BATCH + 1))})
    assert response.status_code == 422


def test_huge_payload_is_refused_before_parsing(client: httpx.Client) -> None:
    huge = b'{"items": [' + b"1," * (MAX_BODY_BYTES // 2) + b"1]}"
    response = client.post("/recommend", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        yield b'{"items": ['
        for _ in range(MAX_BODY_BYTES // 4096 + 1):
            yield b"1," * 2048
        yield b"1]}"

    response = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/recommend").status_code == 405


def test_openapi_description_lists_the_endpoints(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/recommend/batch", "/health", "/items/{item_id}"} <= set(paths)


def test_timestamps_and_at_are_accepted_and_a_model_without_time_ignores_them(client: httpx.Client) -> None:
    plain = client.post("/recommend", json={"items": [100, 999, 120], "k": 3})
    timed = client.post("/recommend", json={"items": [100, 999, 120], "timestamps": [1, 2, 3], "at": 4, "k": 3})
    assert plain.status_code == timed.status_code == 200, timed.text
    assert timed.json() == plain.json() and timed.json()["skipped_items"] == [999]
    batch = client.post("/recommend/batch", json={"histories": [[100, 110], [120]], "timestamps": [[1, 2], [3]],
                                                  "at": 9, "k": 2})
    assert batch.status_code == 200, batch.text
    mismatched = client.post("/recommend/batch", json={"histories": [[100, 110]], "timestamps": [[1]]})
    assert mismatched.status_code == 422 and "one time per item" in mismatched.text
