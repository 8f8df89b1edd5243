"""Repeat-aware benchmark: repeat baselines, ACT-R memory and SASRec on the repeat datasets.

    python benchmarks/repeat_aware.py --dataset instacart-sample tafeng

For each dataset, every model of MODELS below is trained from its configs/<model>_<dataset>.yaml (which
read ../shared/data: run from the repository root) and scored on the test split with seen items ranked
(evaluation.exclude_seen: false): overall, repeat targets (in the user's history) and explore targets (new
to the user) NDCG@10 and HR@10. The trained models (SASRec and HSTU, each alone and with the learnt ACT-R
memory term: sasrec_actr, hstu_actr) run 3 seeds, bounded by their configs' trainer.max_minutes or by
--max-minutes, and by --set overrides (the same for every trained model); the counting
models (popularity, personal_popularity, repeat_recent, actr) have no randomness (no initialisation, no
sampling: the same counts give the same scores), so they run once, and their results say seeds [42].
Each dataset's result goes to benchmarks/results/repeat_<dataset>.json, rewritten after every model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import provenance, write_result  # noqa: E402

MODELS = ("popularity", "personal_popularity", "repeat_recent", "actr", "sasrec", "sasrec_actr", "hstu", "hstu_actr")
COUNTING = {"popularity", "personal_popularity", "repeat_recent", "actr"}
SEEDS = (42, 43, 44)
REPORTED = [f"{group}{metric}@10" for group in ("", "repeat_", "explore_") for metric in ("ndcg", "hr")]


def run(config: Path, seed: int, out: Path, overrides: list[str]) -> dict[str, float]:
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    cfg = load_run_config(config, [f"trainer.seed={seed}", "tracking.enabled=false", f"tracking.output_dir={out}",
                                   "trainer.progress_bar=false", *overrides])
    metrics = train(cfg).metrics
    print(f"{config.stem} seed {seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                      if k.startswith("test_") and "@10" in k), flush=True)
    return metrics


def summarize(model: str, dataset: str, config: Path, runs: list[dict[str, float]], seeds: list[int],
              wall_s: float, overrides: list[str]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for key in REPORTED + ["repeat_share"]:
        values = [r[f"test_{key}"] for r in runs if f"test_{key}" in r]
        if values:
            metrics[key] = {"mean": statistics.mean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return {"model": model, "config": str(config), "overrides": overrides, "seeds": seeds, "metrics": metrics,
            "best_epoch": [r.get("best_epoch") for r in runs],
            "epochs_run": [r.get("epochs_run") for r in runs], "fit_s": [r.get("fit_s") for r in runs],
            "wall_s": wall_s}


def with_flat_fields(result: dict[str, Any]) -> dict[str, Any]:
    """The fields every result file has (benchmarks/table.py reads them): model, metrics (flat, means:
    `<model>_<metric>`), headline (each model's NDCG@10), seeds; the per-model details stay in `models`."""
    flat = {f"{entry['model']}_{key}": value["mean"] for entry in result["models"]
            for key, value in entry["metrics"].items()}
    result.update(model=" / ".join(entry["model"] for entry in result["models"]), metrics=flat,
                  headline=[f"{entry['model']}_ndcg@10" for entry in result["models"]] + ["sasrec_repeat_share"],
                  seeds=sorted({seed for entry in result["models"] for seed in entry["seeds"]}))
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    """The README's table: one row per dataset and model, mean (± std over seeds where there are several)."""
    lines = ["| dataset | model | NDCG@10 | HR@10 | repeat NDCG@10 | repeat HR@10 | explore NDCG@10 | explore HR@10 "
             "| seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for entry in result["models"]:
            cells = []
            for key in REPORTED:
                value = entry["metrics"].get(key)
                std = f" ± {value['std']:.4f}" if value and len(value["values"]) > 1 else ""
                cells.append(f"{value['mean']:.4f}{std}" if value else "-")
            lines.append(f"| {result['dataset']} | {entry['model']} | {' | '.join(cells)} | {len(entry['seeds'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["instacart-sample", "tafeng"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--refresh", action="store_true",
                        help="only rewrite the flat fields of existing results (after a format change)")
    parser.add_argument("--table", action="store_true", help="only print the README table of existing results")
    parser.add_argument("--max-minutes", type=float,
                        help="training budget per seed of the trained models (trainer.max_minutes; default: the config's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for the trained models (e.g. trainer.max_epochs=20), the same for both")
    parser.add_argument("--label", default="",
                        help="appended to the models' names in the results (a variant, e.g. ' no history negatives' with "
                        "--set model.loss.history_negatives=false), so that it sits beside the default entry")
    args = parser.parse_args()
    if args.table:
        import json

        from common import RESULTS

        print(markdown([json.loads((RESULTS / f"repeat_{d}.json").read_text(encoding="utf-8")) for d in args.dataset]))
        return
    if args.refresh:
        import json

        from common import RESULTS

        for dataset in args.dataset:
            path = RESULTS / f"repeat_{dataset}.json"
            write_result(path.stem, with_flat_fields(json.loads(path.read_text(encoding="utf-8"))))
        return
    root = Path(__file__).resolve().parent.parent
    for dataset in args.dataset:
        result: dict[str, Any] = {"benchmark": "repeat_aware", "dataset": dataset, "preset": "raw",
                                  "protocol": "leave-one-out over the item sequence, full ranking, seen items "
                                  "ranked (evaluation.exclude_seen: false), test split", "models": [],
                                  **provenance()}
        from common import RESULTS

        earlier = RESULTS / f"repeat_{dataset}.json"
        if earlier.is_file():  # a run of some models keeps the other models' entries
            import json

            mine = {model + args.label for model in args.models}
            kept = [e for e in json.loads(earlier.read_text(encoding="utf-8"))["models"] if e["model"] not in mine]
            result["models"] = kept
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="repeat-aware-") as tmp:
            for model in args.models:
                config = Path("configs") / f"{model}_{dataset}.yaml"
                seeds = [SEEDS[0]] if model in COUNTING else list(SEEDS)
                overrides = [] if model in COUNTING else (
                    ([] if args.max_minutes is None else [f"trainer.max_minutes={args.max_minutes:g}"]) + args.set)
                model_started = time.perf_counter()
                runs = [run(root / config, seed, Path(tmp), overrides) for seed in seeds]
                result["models"].append(summarize(model + args.label, dataset, config, runs, seeds,
                                                  time.perf_counter() - model_started, overrides))
                result["wall_s"] = time.perf_counter() - started
                print(f"{dataset} {model}: " + ", ".join(
                    f"{k}={v['mean']:.4f}" for k, v in result["models"][-1]["metrics"].items()), flush=True)
                write_result(f"repeat_{dataset}", with_flat_fields(result))


if __name__ == "__main__":
    main()
