"""Serving benchmark: `recsys serve` and `mlflow models serve` of one ml-1m SASRec on 127.0.0.1, under a
closed-loop load of C keep-alive connections, in one run.

    .venv/bin/python benchmarks/serving.py [--model DIR] [--connections 32] [--seconds 8] [--rounds 3]
        [--shared-data /work/shared/data]

The model is an ml-1m SASRec (configs/sasrec_ml-1m.yaml architecture) over the real item map and user
histories, randomly initialised unless --model gives a trained one: serving speed does not depend on the
weights. Scenarios, each a server of its own started afresh:

- by_user_*: POST /recommend {"user_id": u, "k": 10}; by_items_*: POST /recommend {"items": [50 known items],
  "k": 10} (no precomputation: every request encodes its history);
- *_defaults: `recsys serve` with its defaults (1 process, batches gathered with no wait, 1 batch worker on
  1 torch thread); *_processes2: `--processes 2`; by_user_precomputed: `--precompute-users`;
- litserve_by_user: the same model behind LitServe (`benchmarks/litserve_app.py`: its dynamic batching over
  `Recommender.recommend_batch`, max batch 64, no wait, one inference worker), POST /predict {"user_id": u}; run
  where `litserve` is installed (not a dependency of recsys: `pip install litserve`), left out otherwise;
  litserve_by_user_2workers: 2 inference workers and 2 API server processes;
- mlflow_by_user: `mlflow models serve -m models:/serving-bench/1 --env-manager local` with its defaults
  (1 uvicorn worker) of the same model, logged as recsys's pyfunc into a temporary SQLite store and registered
  as `recsys train --register` does; POST /invocations {"dataframe_records": [{"user_id": u}], "params":
  {"k": 10}}. Before timing, each server's answers for 5 users are checked against the in-process Recommender.

The scenarios run one server at a time, round after round (--rounds), so that all of them see the machine as
it drifts; a scenario's figures are its median round by requests/s (every round is in the JSON). Ratios to
mlflow are of the medians.

The load generator is a small asyncio client of our own (wrk is not installed): C connections, each sending
its next request as soon as the previous answer is read (closed loop), raw HTTP/1.1 so that the client costs
little of the 2 cores it shares with the server (0.7 s of CPU per 10,000 requests). Latency is measured per
request from write to the last byte read; requests/s counts answers in the timed window after a 2 s warm-up.
An error is any status but 200 or a broken connection. Writes benchmarks/results/serving_<machine>.json.
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


def request_bytes(body: dict[str, Any], path: str = "/recommend") -> bytes:
    payload = json.dumps(body).encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
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


def wait_ready(port: int, process: subprocess.Popen, log: Path, path: str = "/health") -> None:
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server ended (exit {process.returncode}):\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling the health endpoint, not a wait for a time
    raise SystemExit(f"the server did not answer {path} within 600 s:\n{log.read_text()[-2000:]}")


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


def serve_mlflow(model_uri: str, tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow models serve` of `model_uri` in the local environment, this venv's bin first on PATH (it
    starts `uvicorn` from there)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("wb") as out:
        return subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                                 "local", "-p", str(port), "-h", "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=log.parent, start_new_session=True)


def serve_litserve(model: Path, port: int, log: Path, options: list[str]) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "litserve_app.py"), str(model), str(port),
                                 *options],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def register_pyfunc(model: Path, store: Path) -> tuple[str, str]:
    """`model` logged as recsys's pyfunc into a SQLite store in `store` and registered (as `recsys train
    --register` does); (tracking URI, models:/<name>/1)."""
    from mlflow.tracking import MlflowClient

    from recsys.retrieval.pyfunc import log_pyfunc
    from recsys.training.tracking import using_tracking_uri

    uri = f"sqlite:///{store / 'mlflow.db'}"
    logged = log_pyfunc(model, uri, experiment="serving-bench")
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("serving-bench")
    with using_tracking_uri(uri):
        client.create_model_version("serving-bench", logged, model_id=logged[len("models:/"):])
    return uri, "models:/serving-bench/1"


def answers_as_in_process(port: int, name: str, users: list[Any], rec: Any) -> bool:
    """The server ranks the same items for `users` as the Recommender in this process (one model)."""
    import httpx

    for user in users:
        want = [r.item_id for r in rec.recommend(user=user, k=10)]
        if name == "litserve":
            got = httpx.post(f"http://127.0.0.1:{port}/predict", json={"user_id": user, "k": 10}, timeout=60)
            items = [i["item_id"] for i in got.json()["items"]]
        elif name != "mlflow":
            got = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 10}, timeout=60)
            items = [i["item_id"] for i in got.json()["items"]]
        else:
            got = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                             json={"dataframe_records": [{"user_id": user}], "params": {"k": 10}})
            items = [r["item_id"] for r in got.json()["predictions"]]
        if items != want:
            return False
    return True


SCENARIOS: list[tuple[str, str, list[str]]] = [  # (name, bodies, `recsys serve` options); "mlflow": theirs
    ("by_user_defaults", "by_user", []),
    ("by_user_processes2", "by_user", ["--processes", "2"]),
    ("by_user_precomputed", "by_user", ["--precompute-users"]),
    ("by_items_defaults", "by_items", []),
    ("by_items_processes2", "by_items", ["--processes", "2"]),
    ("mlflow_by_user", "mlflow", []),
    ("litserve_by_user", "litserve", []),  # where litserve is installed (benchmarks/litserve_app.py)
    ("litserve_by_user_2workers", "litserve", ["2"]),
]
TARGETS = {  # issue 22, ml-1m SASRec, 2 cores, 32 connections
    "by_user_requests_s": 1500, "by_user_p99_ms": 50, "over_mlflow": 5, "by_items_requests_s": 800,
    "by_items_p99_ms": 80,
}


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["requests_s"])
    return ordered[(len(ordered) - 1) // 2]


def verdicts(best: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which of issue 22's targets each scenario meets (requests/s, p99 and errors together)."""
    out: dict[str, Any] = {}
    for name, m in best.items():
        kind = "by_user" if name.startswith("by_user") else "by_items" if name.startswith("by_items") else None
        if kind is None:
            continue
        out[name] = (m["requests_s"] >= TARGETS[f"{kind}_requests_s"] and m["p99_ms"] <= TARGETS[f"{kind}_p99_ms"]
                     and m["errors"] == 0)
        if kind == "by_user":
            out[f"{name}_over_mlflow"] = m["requests_s"] / best["mlflow_by_user"]["requests_s"] >= TARGETS["over_mlflow"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved ml-1m model (default: random weights)")
    parser.add_argument("--shared-data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed window of each round, after a 2 s warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=None, help="run only these scenarios")
    parser.add_argument("--machine-name", default="amd-epyc" if "AMD" in open("/proc/cpuinfo").read() else "intel-xeon")
    args = parser.parse_args()
    started = time.perf_counter()
    import importlib.util

    scenarios = [s for s in SCENARIOS if (args.only is None or s[0] in args.only)
                 and (s[1] != "litserve" or importlib.util.find_spec("litserve") is not None)]
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if args.model is None:
            from retrieval import ml1m_model

            model, description = ml1m_model(args.shared_data, tmp_path)
        else:
            model, description = args.model, f"the saved model {args.model}"
        tracking_uri, model_uri = register_pyfunc(model, tmp_path)
        from recsys.retrieval import Recommender

        rec = Recommender.load(model)
        rng = random.Random(SEED)
        users = rng.sample(sorted(rec._user_idx), 2000)
        items = sorted(rec._item_idx)
        bodies = {"by_user": [request_bytes({"user_id": user, "k": 10}) for user in users],
                  "by_items": [request_bytes({"items": rng.sample(items, 50), "k": 10}) for _ in range(2000)],
                  "mlflow": [request_bytes({"dataframe_records": [{"user_id": user}], "params": {"k": 10}},
                                           "/invocations") for user in users],
                  "litserve": [request_bytes({"user_id": user, "k": 10}, "/predict") for user in users]}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in scenarios}
        agree: dict[str, bool] = {}
        for round_ in range(args.rounds):
            for name, kind, options in scenarios:
                port = free_port()
                log = tmp_path / f"{name}-{round_}.log"
                if kind == "mlflow":
                    process = serve_mlflow(model_uri, tracking_uri, port, log)
                elif kind == "litserve":
                    process = serve_litserve(model, port, log, options)
                else:
                    process = serve(model, port, options, ROOT, log)
                try:
                    wait_ready(port, process, log, "/ping" if kind == "mlflow" else "/health")
                    if round_ == 0 and kind != "by_items":
                        agree[name] = answers_as_in_process(port, kind if kind in ("mlflow", "litserve") else name,
                                                            users[:5], rec)
                    runs[name].append(load(port, bodies[kind], args.connections, args.seconds))
                finally:
                    stop(process)
                print(name, f"round {round_ + 1}", runs[name][-1], flush=True)
    best = {name: median_round(results) for name, results in runs.items()}
    metrics: dict[str, Any] = {f"{name}_{key}": m[key] for name, m in best.items()
                               for key in ("requests_s", "p50_ms", "p99_ms", "errors")}
    if "mlflow_by_user" in best:
        for name in best:
            if name.startswith(("by_user", "litserve")):
                metrics[f"{name}_over_mlflow"] = round(best[name]["requests_s"] / best["mlflow_by_user"]["requests_s"], 2)
    result = {
        "benchmark": "serving", "dataset": "ml-1m", "model": description,
        "metrics": metrics,
        "headline": [key for key in ("by_user_defaults_requests_s", "by_user_defaults_p99_ms",
                                     "by_user_processes2_requests_s", "by_user_processes2_p99_ms",
                                     "by_user_precomputed_requests_s", "mlflow_by_user_requests_s",
                                     "by_user_defaults_over_mlflow", "by_user_processes2_over_mlflow",
                                     "by_items_defaults_requests_s", "by_items_defaults_p99_ms",
                                     "by_items_processes2_requests_s", "litserve_by_user_requests_s",
                                     "litserve_by_user_p99_ms") if key in metrics],
        "targets": TARGETS, "targets_met": verdicts(best) if "mlflow_by_user" in best else None,
        "rounds": runs, "answers_as_in_process_for_5_users": agree,
        "settings": {"connections": args.connections, "seconds": args.seconds, "warmup_s": WARMUP_S, "k": 10,
                     "rounds": args.rounds, "history_items": 50,
                     "scenarios": {name: {"mlflow": ["mlflow models serve", "--env-manager", "local"],
                                          "litserve": ["python", "benchmarks/litserve_app.py", *options]}.get(
                                              kind, ["recsys serve", *options]) for name, kind, options in scenarios}},
        "seeds": [SEED], "wall_s": round(time.perf_counter() - started, 1),
        "notes": "Client and server share this machine's 2 cores; one server at a time, the scenarios alternating "
                 "round after round; each scenario's figures are its median round by requests/s.",
        **provenance(),
    }
    path = write_result(f"serving_{args.machine_name}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
