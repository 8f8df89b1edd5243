"""Serving benchmark: `recsys serve` on 127.0.0.1 under a closed-loop load of C keep-alive connections.

    benchmarks/with_priority.sh .venv/bin/python benchmarks/serving.py [--model DIR] [--connections 32]
        [--seconds 10] [--shared-data /work/shared/data]

The model is an ml-1m SASRec (configs/sasrec_ml-1m.yaml architecture) over the real item map and user
histories, randomly initialised unless --model gives a trained one: serving speed does not depend on the
weights. Scenarios: POST /recommend by user_id and by an item history (50 known items, no precomputation), each
through this checkout's server with requests batched across connections (--batch-wait-ms 0 and 2), through
`main`'s server as committed (one encode per request on uvicorn's thread pool: `git archive main`), and by
user_id with --precompute-users.

The load generator is a small asyncio client of our own (wrk is not installed): C connections, each sending
its next request as soon as the previous answer is read (closed loop), raw HTTP/1.1 so that the client costs
little of the 2 cores it shares with the server. Latency is measured per request from write to the last
byte read; requests/s counts answers in the timed window after a 2 s warm-up. An error is any status but 200
or a broken connection. Writes benchmarks/results/serving_<machine>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import provenance, write_result  # noqa: E402

SEED = 0
WARMUP_S = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request_bytes(body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return (b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


async def connection(port: int, bodies: list[bytes], stop_at: float, count_from: float,
                     latencies: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.perf_counter() < stop_at:
            body = bodies[n % len(bodies)]
            n += 1
            start = time.perf_counter()
            writer.write(body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            end = time.perf_counter()
            if start >= count_from:
                latencies.append(end - start)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors.append(head.split(b"\r\n", 1)[0].decode())
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"connection: {exc}")
    finally:
        writer.close()


def load(port: int, bodies: list[bytes], connections: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load for WARMUP_S + `seconds`; metrics of the last `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> None:
        now = time.perf_counter()
        rng = random.Random(SEED)
        await asyncio.gather(*[connection(port, rng.sample(bodies, len(bodies)), now + WARMUP_S + seconds,
                                          now + WARMUP_S, latencies, errors) for _ in range(connections)])

    asyncio.run(run())
    ms = np.asarray(latencies) * 1000
    return {"requests_s": round(len(latencies) / seconds, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": len(errors), "requests": len(latencies),
            "error_examples": sorted(set(errors))[:3]}


def serve(model: Path, port: int, options: list[str], pythonpath: Path, log: Path) -> subprocess.Popen:
    # `pythonpath` first: its recsys wins; the rest of ours stays (packages installed beside the venv)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), *rest])}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", "--model", str(model), "--port",
                                 str(port), *options], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def wait_ready(port: int, process: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended (exit {process.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling the health endpoint, not a wait for a time
    raise SystemExit(f"the server did not answer /health within 600 s:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main_checkout(into: Path) -> Path:
    """`main` as committed, unpacked into `into` (the server before batching)."""
    archive = into / "main.tar"
    subprocess.run(["git", "archive", "-o", str(archive), "main", "recsys"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "main", filter="data")
    return into / "main"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved ml-1m model (default: random weights)")
    parser.add_argument("--shared-data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--machine-name", default="amd-epyc" if "AMD" in open("/proc/cpuinfo").read() else "intel-xeon")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.model is None:
            from retrieval import ml1m_model

            model, description = ml1m_model(args.shared_data, tmp_path)
        else:
            model, description = args.model, f"the saved model {args.model}"
        from recsys.retrieval import Recommender

        rec = Recommender.load(model)
        rng = random.Random(SEED)
        users = rng.sample(sorted(rec._user_idx), 2000)
        items = sorted(rec._item_idx)
        by_user = [request_bytes({"user_id": user, "k": 10}) for user in users]
        by_items = [request_bytes({"items": rng.sample(items, 50), "k": 10}) for _ in range(2000)]
        old = main_checkout(tmp_path)
        scenarios = [
            ("by_user_main", by_user, [], old),
            ("by_user_batched_wait0", by_user, ["--batch-wait-ms", "0"], ROOT),
            ("by_user_batched_wait2", by_user, ["--batch-wait-ms", "2"], ROOT),
            ("by_user_precomputed_main", by_user, ["--precompute-users"], old),
            ("by_user_precomputed_batched_wait0", by_user, ["--precompute-users", "--batch-wait-ms", "0"], ROOT),
            ("by_items_main", by_items, [], old),
            ("by_items_batched_wait0", by_items, ["--batch-wait-ms", "0"], ROOT),
            ("by_items_batched_wait2", by_items, ["--batch-wait-ms", "2"], ROOT),
        ]
        metrics: dict[str, Any] = {}
        for name, bodies, options, code in scenarios:
            port = free_port()
            log = tmp_path / f"{name}.log"
            process = serve(model, port, options, code, log)
            try:
                wait_ready(port, process, log)
                metrics[name] = load(port, bodies, args.connections, args.seconds)
            finally:
                stop(process)
            print(name, metrics[name], flush=True)
    flat = {f"{name}_{key}": value for name, m in metrics.items() for key, value in m.items()
            if key in ("requests_s", "p50_ms", "p99_ms", "errors")}
    result = {
        "benchmark": "serving", "dataset": "ml-1m", "model": description,
        "metrics": flat,
        "headline": [f"{name}_{key}" for name in ("by_user_main", "by_user_batched_wait0", "by_user_batched_wait2",
                                                   "by_items_main", "by_items_batched_wait0", "by_items_batched_wait2")
                     for key in ("requests_s", "p99_ms")],
        "scenarios": metrics,
        "settings": {"connections": args.connections, "seconds": args.seconds, "warmup_s": WARMUP_S, "k": 10,
                     "history_items": 50},
        "seeds": [SEED], "wall_s": round(time.perf_counter() - started, 1),
        "notes": "Client and server share this machine's cores; *_main is main's server as committed (requests "
                 "encoded one by one on uvicorn's thread pool), *_batched_* this checkout's with the given "
                 "--batch-wait-ms (max batch 64, 1 worker thread, 1 torch thread).",
        **provenance(),
    }
    path = write_result(f"serving_{args.machine_name}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
