"""Our SASRec against RecTools' side by side: one run per dataset, the same split, the same metric code, the
defaults of both.

    .venv/bin/python benchmarks/peers_side_by_side.py --dataset ml-100k [--seeds 42 43 44]
        [--peers-venv ~/peers-venv] [--peers-dir ../shared/peers] [--rectools-epochs 50]

For each seed, one after the other on the same machine:

- ours: the shipped config `configs/sasrec_<dataset>.yaml`, as it is apart from `trainer.seed`, trained by
  recsys in a child process (early stopping on validation NDCG@10, the best epoch's weights kept);
- RecTools' `SASRecModel` through `run_rectools.py` of `../shared/peers` in the peers' own virtual environment
  (see its README): its defaults (softmax loss, 2 blocks, hidden 64, max_len 200, dropout 0.2, lr 1e-3, batch
  128), early stopping on validation NDCG@10 with patience 10, up to `--rectools-epochs` epochs.

Both are scored by the peers' `common.py` (`load_interactions` for the split, `evaluate_topk` for HR@10 and
NDCG@10 over all users): our saved model's top-10 of every user (history excluded) goes through the same function
as RecTools' lists, and our own evaluation's test figures are recorded beside it (they must agree). Wall time is
each run's whole child process (data, training with validation, scoring); time to best is the fit's time up to
the best epoch; peak RSS is each child's own. Threads: each child uses torch's default (both cores).
Writes benchmarks/results/peers_<dataset>.json after every run, so a stopped benchmark keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import provenance, write_result  # noqa: E402

DATA_DIRS = {"ml-100k": "ml-100k", "ml-latest-small": "ml-latest-small", "ml-1m": "ml-1m"}


def ours(dataset: str, seed: int, shared_data: Path, peers_dir: Path, into: Path, overrides: list[str]) -> dict[str, Any]:
    """Train our default config for `dataset` with `seed` (and `overrides`) in a child process; its result line."""
    out = subprocess.run([sys.executable, __file__, "--child-ours", dataset, str(seed), str(shared_data),
                          str(peers_dir), str(into), *overrides], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"our run (seed {seed}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_ours(dataset: str, seed: int, shared_data: Path, peers_dir: Path, into: Path, extra: list[str]) -> None:
    """In the child: train, then score the saved model's top-10 with the peers' metric code."""
    started = time.perf_counter()
    import recsys  # noqa: F401  - before torch (recsys.cpus)
    from recsys.retrieval import Recommender
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    config = ROOT / "configs" / f"sasrec_{dataset}.yaml"
    overrides = [f"trainer.seed={seed}", f"tracking.output_dir={into}",
                 f"tracking.tracking_uri=sqlite:///{into / 'mlflow.db'}"]
    if dataset != "ml-latest-small":  # the embedded one needs no path
        overrides.append(f"data.path={shared_data / DATA_DIRS[dataset]}")
    cfg = load_run_config(config, [*overrides, *extra])
    result = train(cfg, config_file=config)
    m = result.metrics
    rec = Recommender.load(result.model_dir)
    os.environ.setdefault("SHARED_DATA", str(shared_data))
    peers_common = load_peers_common(peers_dir)
    import pandas as pd

    interactions = peers_common.load_interactions(dataset)
    # Each user's history up to the test target, in the peers' order (the saved model's own histories end
    # with the target, which recommending for the user would leave out as seen).
    inputs = interactions[interactions.from_end >= 1].sort_values("order").groupby("user_id")["item_id"].agg(list)
    users = inputs.index.tolist()
    lists = rec.recommend_batch(histories=inputs.tolist(), k=10)
    recs = pd.DataFrame([(user, r.item_id, rank + 1) for user, items in zip(users, lists)
                         for rank, r in enumerate(items)], columns=["user_id", "item_id", "rank"])
    scored = peers_common.evaluate_topk(recs, interactions)
    best = int(m["best_epoch"])  # counted from 1; history rows count epochs from 0
    to_best = sum(r.get("epoch_train_s", 0.0) + r.get("epoch_val_s", 0.0) for r in result.history if r["epoch"] < best)
    print(json.dumps({
        "seed": seed, "ndcg@10": scored["ndcg10"], "hr@10": scored["hr10"],
        "own_test_ndcg@10": m["test_ndcg@10"], "own_test_hr@10": m["test_hr@10"],
        "valid_ndcg@10": m["valid_ndcg@10"], "best_epoch": best, "epochs_run": int(m["epochs_run"]),
        "epoch_s": m.get("epoch_s"), "fit_s": m.get("fit_s"), "fit_s_to_best_epoch": round(to_best, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seen_items_in_top10": scored["seen_items_in_top10"], "n_eval_users": scored["n_eval_users"],
        "config": str(config.relative_to(ROOT)),
    }))


def load_peers_common(peers_dir: Path) -> Any:
    """The peers' common.py (data, split, metrics) as a module of its own name: ours is `common` too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("peers_common", peers_dir / "common.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def rectools(dataset: str, seed: int, epochs: int, peers_venv: Path, peers_dir: Path, shared_data: Path,
             into: Path) -> dict[str, Any]:
    started = time.perf_counter()
    env = {**os.environ, "SHARED_DATA": str(shared_data), "PEERS_DIR": str(into)}
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(peers_venv / "bin" / "python"), str(peers_dir / "run_rectools.py"), "--data", dataset,
                          "--model", "sasrec", "--epochs", str(epochs), "--seed", str(seed)],
                         capture_output=True, text=True, cwd=peers_dir, env=env)
    if out.returncode != 0:
        raise SystemExit(f"RecTools (seed {seed}) failed:\n{out.stderr[-3000:]}")
    line = json.loads(out.stdout.strip().splitlines()[-1])
    best = line.get("best_epoch")
    per_epoch = (line.get("s_per_epoch") or 0.0) + (line.get("val_s_per_epoch") or 0.0)
    return {"seed": seed, "ndcg@10": line["ndcg10"], "hr@10": line["hr10"],
            "valid_ndcg@10": line.get("best_val_ndcg10"), "best_epoch": best, "epochs_run": line.get("epochs_run"),
            "epoch_s": line.get("s_per_epoch"), "fit_s": line.get("train_s"),
            "fit_s_to_best_epoch": round(per_epoch * best, 1) if best else None,
            "wall_s": round(time.perf_counter() - started, 1), "peak_rss_mb": line.get("peak_rss_mb"),
            "seen_items_in_top10": line.get("seen_items_in_top10"), "version": line.get("version"),
            "model_catalog_items": line.get("model_catalog_items")}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("ndcg@10", "hr@10", "valid_ndcg@10", "best_epoch", "epoch_s", "fit_s_to_best_epoch", "wall_s",
                "peak_rss_mb"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = statistics.fmean(values)
            if len(values) > 1 and key in ("ndcg@10", "hr@10"):
                out[f"{key}_std"] = statistics.stdev(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATA_DIRS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--peers-dir", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--peers-venv", type=Path, default=Path.home() / "peers-venv")
    parser.add_argument("--rectools-epochs", type=int, default=50,
                        help="RecTools' epoch limit (its README's ml-100k row: 50, best epoch 47)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of our config (recorded in the result; the default compares the shipped one)")
    parser.add_argument("--name", default=None, help="result file peers_<name>.json (default: the dataset)")
    parser.add_argument("--skip-rectools", action="store_true", help="our runs only (a smoke test)")
    parser.add_argument("--child-ours", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ours:
        dataset, seed, shared, peers, into, *extra = args.child_ours
        Path(into).mkdir(parents=True, exist_ok=True)
        child_ours(dataset, int(seed), Path(shared), Path(peers), Path(into), extra)
        return
    if args.dataset is None:
        parser.error("--dataset is required")
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {"recsys": [], "rectools": []}
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as tmp:
        for seed in args.seeds:
            runs["recsys"].append(ours(args.dataset, seed, args.shared_data.resolve(), args.peers_dir.resolve(),
                                       Path(tmp) / f"ours-{seed}", args.set))
            print("recsys", runs["recsys"][-1], flush=True)
            write(args, runs, started)
            if args.skip_rectools:
                continue
            runs["rectools"].append(rectools(args.dataset, seed, args.rectools_epochs, args.peers_venv,
                                             args.peers_dir.resolve(), args.shared_data.resolve(), Path(tmp)))
            print("rectools", runs["rectools"][-1], flush=True)
            write(args, runs, started)


def write(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], started: float) -> None:
    means = {name: summary(rows) for name, rows in runs.items() if rows}
    metrics = {f"{name}_{key}": value for name, m in means.items() for key, value in m.items()}
    if means.get("recsys") and means.get("rectools"):
        metrics["ndcg@10_over_rectools"] = means["recsys"]["ndcg@10"] / means["rectools"]["ndcg@10"]
    result = {
        "benchmark": "peers_side_by_side", "dataset": args.dataset, "preset": "raw",
        "model": "SASRec: recsys (configs/sasrec_<dataset>.yaml) against RecTools SASRecModel (its defaults)",
        "metrics": metrics,
        "headline": [key for key in ("recsys_ndcg@10", "rectools_ndcg@10", "ndcg@10_over_rectools", "recsys_hr@10",
                                     "rectools_hr@10", "recsys_fit_s_to_best_epoch", "rectools_fit_s_to_best_epoch",
                                     "recsys_peak_rss_mb", "rectools_peak_rss_mb") if key in metrics],
        "runs": runs, "seeds": args.seeds,
        "protocol": "leave-one-out (last item test, second-to-last validation), ties in time broken by file order, "
                    "full ranking over all items, history excluded; metrics by ../shared/peers/common.py for both",
        "settings": {"rectools_epochs": args.rectools_epochs, "rectools_patience": 10, "recsys_overrides": args.set},
        "wall_s": round(time.perf_counter() - started, 1),
        "notes": "Defaults against defaults: neither side was tuned for this run (the peers get no search here, so "
                 "no tuned-against-tuned claim is made). Runs one at a time on the same 2 cores.",
        **provenance(),
    }
    write_result(f"peers_{args.name or args.dataset}", result)


if __name__ == "__main__":
    main()
