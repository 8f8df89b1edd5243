"""Live-history benchmark: events acknowledged durably per second by `recsys serve --history-store` while
recommendations are served, then `kill -9` of the server and a count of what survived.

    .venv/bin/python benchmarks/events.py [--seconds 10] [--event-connections 16]
        [--recommend-connections 8] [--processes 1] [--shared-data /work/shared/data]

The model is an ml-1m SASRec (configs/sasrec_ml-1m.yaml architecture, random weights over the real item map and
user histories, as benchmarks/serving.py). The server runs with `--history-store` on a fresh SQLite file
(WAL, synchronous=FULL: every acknowledged event is fsynced) and `--history-max-per-user 1000000` (nothing is
trimmed, so every acknowledged event must still be there at the end). Scenarios, each `--seconds` after a
2 s warm-up, on one server:

- events_1: E connections POST /events with one event each, closed loop, beside R connections asking
  POST /recommend by user_id for the users receiving events (each recommendation reads the store and encodes
  the user's new history);
- events_10, events_100: the same with 10 and 100 events per POST. At the end of events_100's window the server
  is killed with SIGKILL while requests are in flight.

Then the server is restarted on the same file and every acknowledged event (each one identified by its user and
timestamp) is looked up in the store: `lost` must be 0; `stored` may exceed `acknowledged` by the events of
posts in flight at the kill (committed, never answered). Client and server share the machine's cores. Writes
benchmarks/results/events_<machine>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import provenance, write_result  # noqa: E402
from serving import free_port, serve, stop, wait_ready  # noqa: E402

SEED = 0
WARMUP_S = 2.0
BASE_TIME = 1_700_000_000.0
PER_POST = (1, 10, 100)
"""Events per POST /events, one scenario each; the server is killed at the end of the last."""


def post(path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """Send one request, read its answer; returns the status line."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


class Load:
    """What the clients saw: acknowledged events (user, timestamp), latencies, errors, in-flight posts."""

    def __init__(self) -> None:
        self.acknowledged: list[tuple[str, float]] = []
        self.event_latencies: list[float] = []
        self.recommend_latencies: list[float] = []
        self.errors: list[str] = []
        self.events_in_flight_at_end = 0


async def event_connection(port: int, users: list[str], items: list[Any], per_post: int, clock: list[int],
                           seed: int, stop_at: float, count_from: float, load: Load) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(seed)
    try:
        while time.perf_counter() < stop_at:
            events = []
            for _ in range(per_post):
                clock[0] += 1  # one asyncio thread: a unique timestamp per event, the event's identity
                events.append((rng.choice(users), BASE_TIME + clock[0] / 1000))
            body = {"events": [{"user_id": u, "item_id": item, "timestamp": t}
                               for (u, t), item in zip(events, rng.choices(items, k=per_post))]}
            start = time.perf_counter()
            load.events_in_flight_at_end += per_post
            status = await exchange(reader, writer, post("/events", body))
            load.events_in_flight_at_end -= per_post
            if not status.startswith(b"HTTP/1.1 200"):
                load.errors.append(status.decode())
                continue
            load.acknowledged.extend(events)  # counted whenever acknowledged: the kill check needs them all
            if start >= count_from:
                load.event_latencies.append(time.perf_counter() - start)
    except (OSError, asyncio.IncompleteReadError) as exc:
        load.errors.append(f"connection: {type(exc).__name__}")
    finally:
        writer.close()


async def recommend_connection(port: int, users: list[str], stop_at: float, count_from: float,
                               load: Load) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(SEED)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            status = await exchange(reader, writer, post("/recommend", {"user_id": rng.choice(users), "k": 10}))
            if not status.startswith(b"HTTP/1.1 200"):
                load.errors.append(status.decode())
            elif start >= count_from:
                load.recommend_latencies.append(time.perf_counter() - start)
    except (OSError, asyncio.IncompleteReadError) as exc:
        load.errors.append(f"connection: {type(exc).__name__}")
    finally:
        writer.close()


def run_load(port: int, users: list[str], items: list[Any], per_post: int, clock: list[int], args: argparse.Namespace,
             kill_pid: int | None = None) -> tuple[Load, dict[str, Any]]:
    """Closed-loop load for WARMUP_S + seconds; with `kill_pid`, its group is SIGKILLed at the end of the window
    while the clients are still sending."""
    load = Load()

    async def run() -> None:
        now = time.perf_counter()
        stop_at = now + WARMUP_S + args.seconds + (60 if kill_pid else 0)  # killed: the kill ends the clients
        tasks = [asyncio.create_task(event_connection(port, users, items, per_post, clock, SEED + n, stop_at,
                                                      now + WARMUP_S, load))
                 for n in range(args.event_connections)]
        tasks += [asyncio.create_task(recommend_connection(port, users, stop_at, now + WARMUP_S, load))
                  for _ in range(args.recommend_connections)]
        if kill_pid is not None:
            await asyncio.sleep(WARMUP_S + args.seconds)  # the timed window, then the kill, mid-stream
            os.killpg(kill_pid, signal.SIGKILL)
        await asyncio.gather(*tasks)

    asyncio.run(run())
    ev = np.asarray(load.event_latencies) * 1000
    rec = np.asarray(load.recommend_latencies) * 1000
    metrics = {
        "events_per_post": per_post,
        "events_s": round(len(ev) * per_post / args.seconds, 1),
        "event_posts_s": round(len(ev) / args.seconds, 1),
        "event_p50_ms": round(float(np.percentile(ev, 50)), 2), "event_p99_ms": round(float(np.percentile(ev, 99)), 2),
        "recommend_s": round(len(rec) / args.seconds, 1),
        "recommend_p50_ms": round(float(np.percentile(rec, 50)), 2) if len(rec) else None,
        "recommend_p99_ms": round(float(np.percentile(rec, 99)), 2) if len(rec) else None,
        "errors": len([e for e in load.errors if not (kill_pid and e.startswith("connection"))]),
        "error_examples": sorted(set(load.errors))[:3],
    }
    return load, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--event-connections", type=int, default=16)
    parser.add_argument("--recommend-connections", type=int, default=8)
    parser.add_argument("--processes", type=int, default=1, help="recsys serve --processes N")
    parser.add_argument("--machine-name", default="amd-epyc" if "AMD" in open("/proc/cpuinfo").read() else "intel-xeon")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="events-bench-") as tmp:
        tmp_path = Path(tmp)
        from retrieval import ml1m_model

        model, description = ml1m_model(args.shared_data, tmp_path)
        from recsys.history_store import HistoryStore
        from recsys.retrieval import Recommender

        rec = Recommender.load(model)
        items = sorted(rec._item_idx)
        users = [str(u) for u in random.Random(SEED).sample(sorted(rec._user_idx), 2000)]
        store = tmp_path / "events.db"
        options = ["--history-store", str(store), "--history-max-per-user", "1000000", "--processes",
                   str(args.processes)]
        port, log = free_port(), tmp_path / "serve.log"
        process = serve(model, port, options, ROOT, log)
        clock = [0]
        metrics: dict[str, Any] = {}
        acknowledged: list[tuple[str, float]] = []
        try:
            wait_ready(port, process, log)
            for per_post in PER_POST:
                last = per_post == PER_POST[-1]
                load, metrics[f"events_{per_post}"] = run_load(port, users, items, per_post, clock, args,
                                                               kill_pid=process.pid if last else None)
                acknowledged += load.acknowledged
                in_flight = load.events_in_flight_at_end
                print(f"events_{per_post}", metrics[f"events_{per_post}"], flush=True)
            process.wait(timeout=60)
        finally:
            stop(process)
        process = serve(model, port, options, ROOT, log)  # restart on the same file
        try:
            wait_ready(port, process, log)
            history = HistoryStore(store, create=False)
            found = history.recent(sorted({user for user, _ in acknowledged}), limit=10**9)
            stored = {(user, t) for user, h in found.items() for t in h.timestamps}
            total = history.count()
            history.close()
        finally:
            stop(process)
        lost = len(set(acknowledged) - stored)
        metrics["kill9"] = {"acknowledged": len(acknowledged), "stored": total, "lost": lost,
                            "in_flight_at_kill": in_flight, "unacknowledged_but_stored": total - len(acknowledged),
                            "store_bytes": store.stat().st_size}
        print("kill9", metrics["kill9"], flush=True)
    flat = {f"{name}_{key}": value for name, m in metrics.items() for key, value in m.items()
            if isinstance(value, (int, float)) and value is not None}
    result = {
        "benchmark": "events", "dataset": "ml-1m", "model": description,
        "metrics": flat,
        "headline": [*(f"events_{n}_events_s" for n in PER_POST), *(f"events_{n}_recommend_s" for n in PER_POST),
                     "kill9_acknowledged", "kill9_lost"],
        "scenarios": metrics,
        "settings": {"seconds": args.seconds, "warmup_s": WARMUP_S, "event_connections": args.event_connections,
                     "recommend_connections": args.recommend_connections, "users": len(users), "k": 10,
                     "synchronous": "FULL", "journal_mode": "WAL", "processes": args.processes},
        "seeds": [SEED], "wall_s": round(time.perf_counter() - started, 1),
        "notes": "Client and server share this machine's 2 cores. events_s counts events acknowledged (200, committed and fsynced) in the timed window; "
                 "recommendations by user_id read each user's stored events and encode the new history. kill9: "
                 "the server was SIGKILLed at the end of events_100 with posts in flight, restarted, and every "
                 "acknowledged event looked up in the store.",
        **provenance(),
    }
    suffix = "" if args.processes == 1 else f"_processes{args.processes}"
    path = write_result(f"events_{args.machine_name}{suffix}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
