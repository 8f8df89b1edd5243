"""Quality benchmark: train a config to convergence for several seeds, report test metrics (mean, spread).

    python benchmarks/train_quality.py --name sasrec_ml-1m-papers --config configs/sasrec_ml-1m-papers.yaml \
        --seeds 42 43 44 data.path=../shared/data/ml-1m

Protocol: whatever the config says (ml-1m papers' preset: leave-one-out, full ranking over all 3,416 items,
history excluded), early stopping on validation NDCG@10, test metrics of the best validation epoch.
The result file is rewritten after every seed, so a stopped benchmark still reports the seeds it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, command, commit, machine, write_result  # noqa: E402

# Published figures on ML-1M, papers' preset, leave-one-out, full ranking (NDCG@10, HR@10).
PUBLISHED = {
    "sasrec": {"Klenitskiy & Vasilev 2023, SASRec full CE": [0.1821, 0.3152],
               "Klenitskiy & Vasilev 2023, SASRec 3,000 sampled negatives": [0.1857, 0.3159],
               "RecTools report, SASRec": [0.1779, 0.3058]},
    "bert4rec": {"Klenitskiy & Vasilev 2023, BERT4Rec": [0.1537, 0.2843],
                 "RecTools report, BERT4Rec": [0.1618, 0.2921]},
    "gru4rec": {"Klenitskiy & Vasilev 2023, GRU4Rec full CE": [0.1648, 0.2811]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="result file benchmarks/results/<name>.json")
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("--seeds", nargs="+", default=["42", "43", "44"],
                        help="seeds, one run each (config overrides may follow them directly)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="start no new seed after this many minutes")
    parser.add_argument("--append", action="store_true",
                        help="add these seeds to the runs already in the result file (e.g. seeds run in parallel)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    args = parser.parse_args()
    # argparse gives `--seeds 42 43 data.path=...` all to --seeds (nargs="+" takes every non-option after
    # it), so overrides written right after the seeds are split off here.
    args.overrides = [*[s for s in args.seeds if "=" in s], *args.overrides]
    try:
        args.seeds = [int(s) for s in args.seeds if "=" not in s]
    except ValueError as exc:
        parser.error(f"--seeds: {exc}")

    from recsys.run_config import load_run_config
    from recsys.training.train import train

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    runs: list[dict] = []
    for seed in args.seeds:
        if args.budget_min is not None and time.perf_counter() - started > args.budget_min * 60:
            break
        cfg = load_run_config(args.config, [*args.overrides, f"trainer.seed={seed}", "trainer.progress_bar=false",
                                            f"tracking.output_dir={work / 'runs'}",
                                            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"])
        t0 = time.perf_counter()
        result = train(cfg)
        m = result.metrics
        runs.append({"seed": seed, "ndcg@10": m["test_ndcg@10"], "hr@10": m["test_hr@10"],
                     "mrr@10": m["test_mrr@10"], "valid_ndcg@10": m["valid_ndcg@10"],
                     "best_epoch": int(m["best_epoch"]), "epochs_run": int(m["epochs_run"]),
                     "epoch_s": m.get("epoch_s"), "val_epoch_s": m.get("val_epoch_s"),
                     "wall_s": time.perf_counter() - t0})
        print(f"seed {seed}: {runs[-1]}", flush=True)
        earlier = earlier_runs(args.name, {r["seed"] for r in runs}) if args.append else []
        write_result(args.name, summarize(args, cfg, earlier + runs, time.perf_counter() - started))


def earlier_runs(name: str, replaced: set[int]) -> list[dict]:
    """Runs already in benchmarks/results/<name>.json, except those of seeds run again now."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text(encoding="utf-8")).get("runs", []) if r["seed"] not in replaced]


def summarize(args: argparse.Namespace, cfg, runs: list[dict], wall_s: float) -> dict:
    def spread(key: str) -> dict:
        values = [r[key] for r in runs if r[key] is not None]  # e.g. no epoch_s for a count-fitted model
        if not values:
            return {"mean": None, "std": None, "min": None, "max": None}
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    ndcg, hr = spread("ndcg@10"), spread("hr@10")
    return {
        "benchmark": "train_quality",
        "dataset": cfg.data.name,
        "preset": cfg.data.preset,
        "split": cfg.data.split,
        "model": cfg.model_name,
        "config": cfg.to_dict(),
        "metrics": {"ndcg@10": ndcg["mean"], "hr@10": hr["mean"], "ndcg@10_std": ndcg["std"],
                    "hr@10_std": hr["std"], "mrr@10": spread("mrr@10")["mean"],
                    "epoch_s": spread("epoch_s")["mean"], "best_epoch": spread("best_epoch")["mean"],
                    "epochs_run": spread("epochs_run")["mean"], "wall_s_per_seed": spread("wall_s")["mean"]},
        "runs": runs,
        "published": PUBLISHED.get(cfg.model_name, {}),
        "seeds": [r["seed"] for r in runs],
        "wall_s": wall_s,
        "machine": machine(),
        "command": command(),
        "commit": commit(),
    }


if __name__ == "__main__":
    main()
