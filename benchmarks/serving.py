"""Serving benchmark: `recsys serve` on 127.0.0.1 under a closed-loop load of C keep-alive connections.

    benchmarks/with_priority.sh .venv/bin/python benchmarks/serving.py [--model DIR] [--connections 32]
        [--seconds 10] [--shared-data /work/shared/data]
    benchmarks/with_priority.sh .venv/bin/python benchmarks/serving.py --against-mlflow [--seconds 8] [--rounds 2]

The model is an ml-1m SASRec (configs/sasrec_ml-1m.yaml architecture) over the real item map and user
histories, randomly initialised unless --model gives a trained one: serving speed does not depend on the
weights. Scenarios: POST /recommend by user_id and by an item history (50 known items, no precomputation), each
through this checkout's server with requests batched across connections (--batch-wait-ms 0 and 2), through
`main`'s server as committed (one encode per request on uvicorn's thread pool: `git archive main`), and by
user_id with --precompute-users.

With --against-mlflow: `recsys serve` and `mlflow models serve` of the same model, by user_id (k = 10), in one
run, alternating for --rounds rounds. The model is an ml-latest-small SASRec (configs/sasrec_ml-latest-small.yaml
architecture, random weights; or --model), logged as recsys's pyfunc into a temporary SQLite store and registered,
as `recsys train --register` does; MLflow serves `models:/<name>/1` with `--env-manager local` and its defaults
(1 uvicorn worker), recsys serves the model directory with its defaults, and with --precompute-users (user
vectors encoded at start-up, so a request by user_id only searches). Requests: POST /recommend
{"user_id": u, "k": 10} against POST /invocations {"dataframe_records": [{"user_id": u}], "params": {"k": 10}}.
Writes benchmarks/results/serving_mlflow_<machine>.json with the ratio of requests/s (best round of each).

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


def small_model(into: Path) -> tuple[Path, str]:
    """A saved ml-latest-small SASRec (random weights, the embedded data's item map and histories)."""
    import torch

    from recsys.config import DataConfig
    from recsys.data import schema
    from recsys.data.prepare import prepare_dataset
    from recsys.models import build_model
    from recsys.run_config import load_run_config
    from recsys.saved_model import SavedModel, save_model

    cfg = load_run_config(ROOT / "configs" / "sasrec_ml-latest-small.yaml", [])
    dataset = prepare_dataset(DataConfig(name="ml-latest-small"))
    torch.manual_seed(SEED)
    model = build_model(cfg.model_name, cfg.model, dataset.n_items)
    saved = SavedModel(model_name=cfg.model_name, config=cfg.to_dict(), state_dict=model.state_dict(),
                       n_items=dataset.n_items, item_map=dataset.item_map, user_map=dataset.user_map,
                       items=dataset.items, histories=dataset.sequences.select(schema.USER_IDX, schema.ITEMS),
                       metrics={}, extra={"dataset": "ml-latest-small", "preset": "raw"})
    return save_model(saved, into / "small-model"), (
        f"SASRec (configs/sasrec_ml-latest-small.yaml architecture: hidden {cfg.model.hidden}, "
        f"{cfg.model.n_layers} layers, max_len {cfg.model.max_len}), randomly initialised (seed {SEED}) over the "
        "embedded ml-latest-small item map and user histories")


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
        if name != "mlflow":
            got = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 10}, timeout=60)
            items = [i["item_id"] for i in got.json()["items"]]
        else:
            got = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                             json={"dataframe_records": [{"user_id": user}], "params": {"k": 10}})
            items = [r["item_id"] for r in got.json()["predictions"]]
        if items != want:
            return False
    return True


def against_mlflow(args: argparse.Namespace, started: float) -> None:
    """`recsys serve` against `mlflow models serve` of the same model, by user_id; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="serving-mlflow-bench-") as tmp:
        tmp_path = Path(tmp)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        model, description = (args.model, f"the saved model {args.model}") if args.model else small_model(tmp_path)
        tracking_uri, model_uri = register_pyfunc(model, tmp_path)
        from recsys.retrieval import Recommender

        rec = Recommender.load(model)
        rng = random.Random(SEED)
        users = rng.sample(sorted(rec._user_idx), 500)
        ours = [request_bytes({"user_id": user, "k": 10}) for user in users]
        bodies = {"recsys": ours, "recsys_precomputed": ours,
                  "mlflow": [request_bytes({"dataframe_records": [{"user_id": user}], "params": {"k": 10}},
                                           "/invocations") for user in users]}
        options = {"recsys": [], "recsys_precomputed": ["--precompute-users"]}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in bodies}
        agree: dict[str, bool] = {}
        for round_ in range(args.rounds):
            for name in bodies:
                port = free_port()
                log = tmp_path / f"{name}-{round_}.log"
                process = (serve(model, port, options[name], ROOT, log) if name in options
                           else serve_mlflow(model_uri, tracking_uri, port, log))
                try:
                    wait_ready(port, process, log, "/health" if name in options else "/ping")
                    if round_ == 0:
                        agree[name] = answers_as_in_process(port, name, users[:5], rec)
                    runs[name].append(load(port, bodies[name], args.connections, args.seconds))
                finally:
                    stop(process)
                print(name, f"round {round_ + 1}", runs[name][-1], flush=True)
    best = {name: max(results, key=lambda r: r["requests_s"]) for name, results in runs.items()}
    def over_mlflow(name: str) -> float:
        return best[name]["requests_s"] / max(best["mlflow"]["requests_s"], 1e-9)

    ratio = over_mlflow("recsys")
    metrics = {f"{name}_by_user_{key}": best[name][key] for name in best for key in ("requests_s", "p50_ms",
                                                                                      "p99_ms", "errors")}
    metrics["recsys_over_mlflow_requests_s"] = round(ratio, 2)
    metrics["recsys_precomputed_over_mlflow_requests_s"] = round(over_mlflow("recsys_precomputed"), 2)
    result = {
        "benchmark": "serving_against_mlflow", "dataset": "ml-latest-small", "model": description,
        "metrics": metrics,
        "headline": ["recsys_by_user_requests_s", "recsys_precomputed_by_user_requests_s",
                     "mlflow_by_user_requests_s", "recsys_over_mlflow_requests_s",
                     "recsys_precomputed_over_mlflow_requests_s", "recsys_by_user_p99_ms", "mlflow_by_user_p99_ms"],
        "target": "recsys serve by user_id >= 5x mlflow models serve of the same model (issue 22)",
        "target_met": ratio >= 5, "target_met_with_precompute_users": over_mlflow("recsys_precomputed") >= 5,
        "rounds": runs, "answers_as_in_process_for_5_users": agree,
        "settings": {"connections": args.connections, "seconds": args.seconds, "warmup_s": WARMUP_S, "k": 10,
                     "rounds": args.rounds, "recsys_serve": "defaults (batch wait 2 ms, max batch 64, 1 worker); recsys_precomputed: "
                                     "--precompute-users too",
                     "mlflow_models_serve": "--env-manager local, defaults (1 uvicorn worker)"},
        "seeds": [SEED], "wall_s": round(time.perf_counter() - started, 1),
        "notes": "Client and server share this machine's cores; one server runs at a time, the two alternating; "
                 "metrics are each server's best round (all rounds under 'rounds').",
        **provenance(),
    }
    path = write_result(f"serving_mlflow_{args.machine_name}", result)
    print(f"wrote {path}")


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
    parser.add_argument("--against-mlflow", action="store_true",
                        help="recsys serve against mlflow models serve of the same model (ml-latest-small)")
    parser.add_argument("--rounds", type=int, default=2, help="with --against-mlflow: rounds of both servers")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.against_mlflow:
        against_mlflow(args, started)
        return
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
