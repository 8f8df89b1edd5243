"""A loopback soak of `recsys serve` as a real process: 1,200 mixed requests in 6 bursts of 200 from 32 client
threads (by user, by item history, 256-user batches, unknown users, bad JSON, lone surrogates); no 500 and the
server's RSS stays flat. Before requests were batched on the server's own worker threads, each of uvicorn's 40
pool threads encoded on its own (its own malloc arena, its own OpenMP team) and one such burst grew the server
by hundreds of MB."""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl
import pytest
import torch

from recsys.models import SASRec, SASRecConfig
from recsys.saved_model import SavedModel, save_model
from tests.processes import TEST_TIMEOUT_S, answers, running
from tests.reliability.conftest import cli_command, cli_env

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)

N_ITEMS, N_USERS, MAX_LEN = 2000, 600, 100
GROWTH_BOUND_MIB = 48
"""Most the server may grow from the end of the first burst (allocator pools and torch buffers at their working
size) to the end of the last. Measured on 2 shared cores (load average 13): 1-32 MiB over 2,000 requests to a
model twice this size; the old per-pool-thread path grew by hundreds."""


def mid_size_model(into: Path) -> Path:
    """A random SASRec the size of a small real one (2,000 items, 600 users with 20-100 items each, max_len 100):
    big enough that each encode's buffers are megabytes, as in production, yet saved in a second."""
    torch.manual_seed(0)
    rng = random.Random(0)
    model = SASRec(N_ITEMS, SASRecConfig(max_len=MAX_LEN, hidden=32, n_layers=2, n_heads=2, dropout=0.0))
    item_map = pl.DataFrame({"item_idx": pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int32),
                             "item_id": pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int64)})
    user_map = pl.DataFrame({"user_idx": pl.Series(range(1, N_USERS + 1), dtype=pl.Int32),
                             "user_id": pl.Series(range(1, N_USERS + 1), dtype=pl.Int64)})
    histories = pl.DataFrame({"user_idx": pl.Series(range(1, N_USERS + 1), dtype=pl.Int32),
                              "items": pl.Series([rng.sample(range(1, N_ITEMS + 1), rng.randint(20, MAX_LEN))
                                                  for _ in range(N_USERS)], dtype=pl.List(pl.Int32))})
    config = {"model": {"name": "sasrec", "max_len": MAX_LEN, "hidden": 32, "n_layers": 2, "n_heads": 2,
                        "dropout": 0.0}}
    saved = SavedModel(model_name="sasrec", config=config, state_dict=model.state_dict(), n_items=N_ITEMS,
                       item_map=item_map, user_map=user_map, items=item_map, histories=histories, metrics={},
                       extra={"dataset": "synthetic"})
    return save_model(saved, into / "model")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    model = mid_size_model(tmp_path_factory.mktemp("soak"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = model.parent / "serve.log"
    with running(cli_command("serve", "--model", str(model), "--port", str(port), "--access-log"), log,
                 env=cli_env(), ready=answers(f"{url}/health"),
                 what=f"recsys serve to answer GET {url}/health") as process:
        yield url, process
    text = log.read_text()
    assert "Traceback" not in text
    assert '"POST /recommend HTTP/1.1" 200' in text  # --access-log: a line per request


def mixed_requests(n: int, seed: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out: list[tuple[str, dict]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.40:
            out.append(("/recommend", {"json": {"user_id": rng.randint(1, N_USERS), "k": rng.randint(1, 50)}}))
        elif kind < 0.65:
            items = rng.sample(range(1, N_ITEMS + 1), rng.randint(1, MAX_LEN))
            out.append(("/recommend", {"json": {"items": items, "k": 10}}))
        elif kind < 0.67:
            out.append(("/recommend/batch", {"json": {"user_ids": rng.sample(range(1, N_USERS + 1), 256), "k": 10}}))
        elif kind < 0.80:
            out.append(("/recommend", {"json": {"user_id": N_USERS + rng.randint(1, 10**6)}}))
        elif kind < 0.92:
            out.append(("/recommend", {"content": bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))}))
        else:
            out.append(("/recommend", {"content": b'{"user_id": "\\ud800", "deny": ["\\udfff"]}'}))
    return out


def burst(url: str, requests: list[tuple[str, dict]]) -> list[int]:
    with httpx.Client(base_url=url, timeout=120, headers={"content-type": "application/json"},
                      limits=httpx.Limits(max_connections=32)) as client, ThreadPoolExecutor(32) as pool:
        return list(pool.map(lambda r: client.post(r[0], **r[1]).status_code, requests))


def test_bursts_of_mixed_requests_keep_memory_flat(server: tuple[str, subprocess.Popen]) -> None:
    url, process = server
    start = rss_mib(process.pid)
    codes = burst(url, mixed_requests(200, seed=0))
    warm = rss_mib(process.pid)
    after = []
    for seed in range(1, 6):
        codes += burst(url, mixed_requests(200, seed=seed))
        after.append(rss_mib(process.pid))
    print(f"server RSS: {start:.0f} MiB at start, {warm:.0f} after the first burst, then "
          + ", ".join(f"{mib:.0f}" for mib in after))
    assert len(codes) == 1200 and not [c for c in codes if c >= 500]
    assert {200, 404, 422} <= set(codes)
    assert process.poll() is None
    assert max(after) - warm < GROWTH_BOUND_MIB, (start, warm, after)
