"""`recsys serve --compile` as a real process on a localhost port, under bad and concurrent requests: client
errors are 4xx, never a 500; the process survives and its memory stays bounded; a schemathesis fuzz of its own
OpenAPI description finds no 5xx. The encoder is compiled at start-up (batches of 16 histories or more use it)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from recsys.saved_model import save_model
from recsys.serving.http import MAX_BATCH, MAX_BODY_BYTES, MAX_ITEMS, MAX_K
from tests.processes import TEST_TIMEOUT_S, answers, running
from tests.reliability.conftest import cli_command, cli_env
from tests.retrieval.conftest import ITEM_IDS, tiny_saved_model

# The first test also waits for the server's start-up (up to START_TIMEOUT_S): its own limit is longer.
pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    model = save_model(tiny_saved_model(), tmp_path_factory.mktemp("serve") / "model")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = model.parent / "serve.log"
    # `running` stops the server (its whole process group) however this ends, a start-up that failed included.
    with running(cli_command("serve", "--model", str(model), "--port", str(port), "--compile"), log,
                 env=cli_env(), ready=answers(f"{url}/health"),
                 what=f"recsys serve --compile to answer GET {url}/health") as process:
        yield url, process
    assert "Traceback" not in log.read_text()  # no request ever raised through


BAD_REQUESTS: list[tuple[str, str, dict]] = [
    ("POST", "/recommend", {"content": b"{not json"}),
    ("POST", "/recommend", {"content": b""}),
    ("POST", "/recommend", {"content": b"\xff\xfe\x00garbage"}),
    ("POST", "/recommend", {"content": b"[1, 2]"}),
    ("POST", "/recommend", {"content": b"null"}),
    ("POST", "/recommend", {"content": b'{"items": [1e999]}'}),
    ("POST", "/recommend", {"content": b'{"items": [NaN]}'}),
    ("POST", "/recommend", {"content": b'{"user_id": 11, "k": 1e308}'}),
    ("POST", "/recommend", {"content": b'{"user_id": ' + b"9" * 5000 + b"}"}),
    ("POST", "/recommend", {"content": b"[" * 5000 + b"]" * 5000}),
    ("POST", "/recommend", {"json": {"items": [[[[[]]]]]}}),
    ("POST", "/recommend", {"json": {"items": [100, 110], "k": True}}),
    ("POST", "/recommend", {"json": {"items": [100], "allow": "100"}}),
    ("POST", "/recommend", {"json": {"items": ["x" * 201]}}),
    ("POST", "/recommend", {"json": {"user_id": 2**64}}),
    ("POST", "/recommend", {"json": {"user_id": 11, "k": MAX_K + 1}}),
    ("POST", "/recommend", {"json": {"items": list(range(MAX_ITEMS + 1))}}),
    ("POST", "/recommend", {"json": {"user_id": 11}, "headers": {"content-type": "text/plain"}}),
    ("POST", "/recommend", {"content": b'{"items": [' + b"1," * (MAX_BODY_BYTES // 2) + b"1]}"}),
    ("POST", "/recommend/batch", {"json": {"histories": [[100]] * (MAX_BATCH + 1)}}),
    ("POST", "/recommend/batch", {"json": {"histories": [[]]}}),
    ("POST", "/recommend/batch", {"json": {"user_ids": [11, "nobody"]}}),
    ("GET", "/items/%00", {}),
    ("GET", "/items/" + "9" * 400, {}),
    ("GET", "/nope", {}),
    ("DELETE", "/recommend", {}),
    ("GET", "/recommend", {}),
    ("POST", "/health", {}),
]


@pytest.mark.parametrize("method, path, options", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_client_errors_are_4xx(server: tuple[str, subprocess.Popen], method: str, path: str, options: dict) -> None:
    url, _ = server
    headers = {"content-type": "application/json", **options.get("headers", {})}
    kwargs = {k: v for k, v in options.items() if k != "headers"}
    response = httpx.request(method, url + path, headers=headers, timeout=30, **kwargs)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")


def burst(url: str, n: int, seed: int) -> list[int]:
    """`n` requests from 16 threads: valid ones, bad ones and bodies just over the size limit."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            bodies.append(("/recommend", {"json": {"items": rng.sample(ITEM_IDS, 5), "k": rng.randint(1, 20)}}))
        elif kind == 1:
            bodies.append(("/recommend/batch", {"json": {"user_ids": [11, 12, 13], "k": 3}}))
        elif kind == 2:
            bodies.append(("/recommend", {"json": {"user_id": rng.randint(0, 99), "k": rng.randint(-2, 40)}}))
        elif kind == 3:
            bodies.append(("/recommend", {"content": bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))}))
        else:
            bodies.append(("/recommend", {"content": b'{"items": [' + b"100," * (MAX_BODY_BYTES // 4) + b"100]}"}))
    with httpx.Client(base_url=url, timeout=60, headers={"content-type": "application/json"},
                      limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda b: client.post(b[0], **b[1]).status_code, bodies))


def test_a_burst_of_concurrent_requests_keeps_memory_bounded(server: tuple[str, subprocess.Popen]) -> None:
    url, process = server
    burst(url, 40, seed=0)  # warm-up: allocator pools, FAISS and torch buffers reach their working size
    before = rss_mib(process.pid)
    codes = burst(url, 400, seed=1)
    middle = rss_mib(process.pid)
    codes += burst(url, 400, seed=2)
    after = rss_mib(process.pid)
    assert not [c for c in codes if c >= 500]
    assert {200, 404, 413, 422} <= set(codes)
    health = httpx.get(f"{url}/health")
    assert process.poll() is None and health.status_code == 200 and health.json()["compiled"] is True
    print(f"server RSS: {before:.0f} MiB before, {middle:.0f} after 400 requests, {after:.0f} after 800")
    assert middle - before < 64 and after - middle < 16, (before, middle, after)  # bounded, and no leak


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz_finds_no_server_error(server: tuple[str, subprocess.Popen], mode: GenerationMode) -> None:
    """Requests generated from the server's own /openapi.json: valid ones (positive) and ones that break the
    schema (negative: wrong types, missing fields, out-of-range values), 40 per operation and mode."""
    url, process = server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/recommend/batch", "/health", "/items/{item_id}"}
    statuses: list[int] = []
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, timeout=30)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])
            json.loads(response.text)  # every answer, error or not, is JSON

        try:
            call()
        except Unsatisfiable:  # negative mode, no input that breaks the schema: none, or any string will do
            assert mode is GenerationMode.NEGATIVE and operation.path in ("/health", "/items/{item_id}")
    print(f"schemathesis {mode.value}: {len(statuses)} requests, statuses {sorted(set(statuses))}")
    assert process.poll() is None
