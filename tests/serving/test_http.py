"""The HTTP server for real: uvicorn on a free localhost port in a thread, queried with httpx."""

from __future__ import annotations

import gc
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from recsys.retrieval import Recommender
from recsys.saved_model import save_model
from recsys.serving.batching import BatchingConfig
from recsys.serving.http import (MAX_BATCH, MAX_BODY_BYTES, MAX_ITEMS, MAX_K, JSONFramingErrors, app_from_settings,
                                 create_app)

from tests.processes import TEST_TIMEOUT_S, app_in_thread
from tests.retrieval.conftest import HISTORIES, tiny_saved_model

# The first test also waits for the server fixture (up to START_TIMEOUT_S): a longer limit than that wait.
pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return Recommender.load(save_model(tiny_saved_model(), tmp_path_factory.mktemp("http") / "model"))


@pytest.fixture(scope="module")
def server(rec: Recommender) -> Iterator[str]:
    with app_in_thread(create_app(rec), http=JSONFramingErrors) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10) as c:
        yield c


def test_health(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "sasrec", "n_items": 30, "n_users": 5,
                               "format_version": 1, "index": "flat", "compiled": False,
                               "history_store": None, "pid": os.getpid()}


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
    for content in (b"{not json", b"", b"[1, 2]", b"null"):
        response = client.post("/recommend", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422, (content, response.text)
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


@pytest.mark.parametrize("path, body, field", [
    ("/recommend", b'{"user_id": "\\ud800"}', "user_id"),
    ("/recommend", b'{"items": [100, "\\udc00"]}', "items"),
    ("/recommend", b'{"user_id": 11, "deny": ["\\ud800"]}', "deny"),
    ("/recommend", b'{"user_id": 11, "allow": ["x\\udfff"]}', "allow"),
    ("/recommend", b'{"user_id": 11, "on_unknown": "\\ud800"}', "on_unknown"),
    ("/recommend", b'{"user_id": 11, "\\ud800": 1}', ""),
    ("/recommend/batch", b'{"user_ids": [11, "\\ud800"]}', "user_ids"),
    ("/recommend/batch", b'{"histories": [["\\ud800"]]}', "histories"),
])
def test_lone_surrogates_are_a_422_that_names_the_field(client: httpx.Client, path: str, body: bytes,
                                                         field: str) -> None:
    """JSON may escape a lone surrogate, which is no Unicode text: echoing it used to fail encoding (a 500)."""
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "\n" not in response.text and field in json.dumps(response.json()["detail"])
    assert "\\ud" in response.text or "\\udc" in response.text or "\\udf" in response.text  # echoed as an escape
    emoji = client.post("/recommend", content=b'{"items": [100, "\\ud83d\\ude00"]}',  # a valid pair still works
                        headers={"content-type": "application/json"})
    assert emoji.status_code == 200 and emoji.json()["skipped_items"] == ["\U0001f600"]


def test_a_body_that_is_not_utf8_is_a_422_naming_the_byte(client: httpx.Client) -> None:
    response = client.post("/recommend", content=b'{"items": ["caf\xe9"]}', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"detail": "request body is not UTF-8: byte 0xe9 at offset 15"}


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1, 2", b"1.5"])
def test_a_malformed_content_length_is_a_json_400(server: str, length: bytes) -> None:
    """HTTP cannot frame such a request, so RFC 9112 (6.3) makes it a 400 and the connection closes."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + length + b"\r\n\r\n{}")
        reply = b""
        while chunk := sock.recv(4096):  # the server closes the connection after answering
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
    assert json.loads(payload)["detail"].startswith("malformed HTTP request")


def test_a_served_model_is_kept_out_of_the_cyclic_collector(tmp_path: Path) -> None:
    """`serve` freezes what the loaded model holds (gc.freeze): a full collection walking its tables took
    113 ms inside some request (the serving benchmark's p99)."""
    model = save_model(tiny_saved_model(), tmp_path / "model")
    gc.collect()
    before = gc.get_freeze_count()
    try:
        app = app_from_settings({"model": str(model), "index": "flat", "precompute_users": False,
                                 "compile": False, "batching": {}, "history_store": None, "history": {}})
        assert gc.get_freeze_count() > before
        assert not any(o is app.state.batcher for o in gc.get_objects())  # frozen: not in any generation
    finally:
        gc.unfreeze()


def test_openapi_lists_the_client_errors(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/recommend", "/recommend/batch"):
        assert {"200", "404", "413", "422"} <= set(paths[path]["post"]["responses"]), path


def test_docs_work_offline(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    assert not re.findall(r"(?:src|href)=[\"']https?://", page.text)  # nothing from a CDN
    for asset in re.findall(r"(?:src|href)=[\"'](/[^\"']+)", page.text):
        assert client.get(asset).status_code == 200, asset
    assert "/openapi.json" in page.text


def test_concurrent_requests_are_batched_and_answered_each_its_own(rec: Recommender) -> None:
    """With time to gather, 24 concurrent requests share batches; each gets its own answer or its own error."""
    app = create_app(rec, BatchingConfig(max_batch=64, max_wait_ms=200))
    bodies = [{"user_id": user, "k": 2} for user in (11, 12, 13, 14)] * 5 + [
        {"user_id": 99}, {"items": [390, 380], "k": 3}, {"items": [7, 8]}, {"user_id": 15, "k": 3}]
    with app_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda body: client.post("/recommend", json=body), bodies))
        stats = app.state.batcher
    for body, response in zip(bodies[:20], responses):
        assert response.status_code == 200
        assert [i["item_id"] for i in response.json()["items"]] == [r.item_id for r in rec.recommend(**{
            "user": body["user_id"], "k": 2})]
    assert [r.status_code for r in responses[20:]] == [404, 200, 422, 422]
    assert [i["item_id"] for i in responses[21].json()["items"]] == [r.item_id for r in rec.recommend(
        history=[390, 380], k=3)]
    assert stats.queries == len(bodies) and stats.batches < len(bodies), (stats.batches, stats.queries)
