"""Contrastive self-supervision on sparse data: SASRec trained plain, with CL4SRec and with MCLRec.

    benchmarks/with_priority.sh .venv/bin/python benchmarks/contrastive.py --dataset ml-100k \
        --methods none cl4srec mclrec --seeds 42 43 44

Protocol, the same for every method (nothing below was tuned, on validation or on test): the dataset's
config (configs/sasrec_<dataset>.yaml, leave-one-out, full ranking, history excluded) with the overrides in
PROTOCOL (shorter histories and a bounded number of epochs, so that 3 methods x 3 seeds fit on 2 shared
cores), early stopping on validation NDCG@10, test metrics of the best validation epoch. CL4SRec and MCLRec
run with trainer.contrastive's defaults (the papers' lambda 0.1, tau 1 with dot products, all three
augmentations). Several invocations (e.g. one per method, side by side) add their runs to one result file,
benchmarks/results/contrastive_<dataset>.json, under a lock; a run of the same method and seed replaces the
old one. The file is rewritten after every run, so a stopped benchmark keeps the runs it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, command, commit, machine, write_result  # noqa: E402
from train_quality import run_seed  # noqa: E402

ROOT = Path(__file__).parents[1]
METHODS = ("none", "cl4srec", "mclrec")
PROTOCOL = {
    # ml-100k: 943 users with 106 ratings on average; batches of 64 give 15 updates an epoch.
    "ml-100k": ["model.max_len=50", "trainer.batch_size=64", "trainer.lr=0.002", "trainer.max_epochs=40",
                "trainer.patience=5"],
    # ml-latest-small's config already trains every window with a decaying rate; early stopping is added.
    "ml-latest-small": ["model.max_len=50", "trainer.max_epochs=15", "trainer.patience=4"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(PROTOCOL), required=True)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder holding the dataset's raw files (<data>/<dataset>)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--summarize-only", action="store_true",
                        help="train nothing: rewrite the result file's summary from the runs it holds")
    parser.add_argument("overrides", nargs="*",
                        help="more config overrides for every method, after -- (say so in the README)")
    args = parser.parse_args()
    if args.summarize_only:
        add_run(args.results_dir, args.dataset, None, None)
        return

    from recsys.run_config import load_run_config

    work = Path(tempfile.mkdtemp(prefix="recsys-contrastive-"))
    config_file = ROOT / "configs" / f"sasrec_{args.dataset}.yaml"
    for method in args.methods:
        for seed in args.seeds:
            cfg = load_run_config(config_file, [
                f"data.path={args.data / args.dataset}", *PROTOCOL[args.dataset], *args.overrides,
                f"trainer.contrastive={method}", f"trainer.seed={seed}", "trainer.progress_bar=false",
                f"tracking.output_dir={work / 'runs'}", f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"])
            run = {"method": method, **run_seed(cfg, None), "command": command(), "commit": commit()}
            add_run(args.results_dir, args.dataset, cfg.to_dict(), run)


def add_run(directory: Path, dataset: str, config: dict[str, Any] | None, run: dict[str, Any] | None) -> None:
    """Put `run` into contrastive_<dataset>.json (replacing a run of its method and seed) and rewrite it;
    with None, only rewrite the summary (the config then is the file's own)."""
    from filelock import FileLock

    name = f"contrastive_{dataset}"
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(Path(tempfile.gettempdir()) / f"recsys-{name}.lock")):
        path = directory / f"{name}.json"
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        runs = [r for r in old.get("runs", []) if run is None or (r["method"], r["seed"]) != (run["method"], run["seed"])]
        runs = sorted([*runs, *([run] if run else [])], key=lambda r: (METHODS.index(r["method"]), r["seed"]))
        if config is None:  # the file's config, with the contrastive defaults it keeps apart
            config = {**old["config"], "trainer": {**old["config"]["trainer"],
                                                   "contrastive": {"method": "none", **old["contrastive_defaults"]}}}
        result = summarize(dataset, config, runs)
        if old.get("note"):  # a note added by hand (how the runs were made) stays
            result["note"] = old["note"]
        write_result(name, result, directory)


def summarize(dataset: str, config: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    metrics: dict[str, float | None] = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        for key in ("ndcg@10", "hr@10", "valid_ndcg@10", "best_epoch", "epoch_s", "wall_s"):
            values = [r[key] for r in mine if r.get(key) is not None]
            metrics[f"{method}_{key}"] = statistics.fmean(values) if values else None
            if key in ("ndcg@10", "hr@10"):
                metrics[f"{method}_{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    trainer = {k: v for k, v in config["trainer"].items() if k not in ("seed", "contrastive")}
    return {
        "benchmark": "contrastive",
        "dataset": dataset,
        "preset": config["data"]["preset"],
        "split": config["data"]["split"],
        "model": config["model"]["name"],
        "headline": [k for k in metrics if k.endswith(("_ndcg@10", "_hr@10")) and "valid" not in k],
        "metrics": metrics,
        "protocol": PROTOCOL[dataset],
        "config": {**config, "trainer": trainer},
        "contrastive_defaults": {k: v for k, v in config["trainer"]["contrastive"].items() if k != "method"},
        "runs": runs,
        "seeds": sorted({r["seed"] for r in runs}),
        "wall_s": sum(r["wall_s"] for r in runs),  # of all runs, one after the other (two ran side by side)
        "machine": machine(),
        # the invocations that ran the runs (e.g. two side by side), else this one
        "command": " & ".join(sorted({r["command"] for r in runs if "command" in r})) or command(),
        "commit": " & ".join(sorted({r["commit"] for r in runs if r.get("commit")})) or commit(),  # the runs' own
    }


if __name__ == "__main__":
    from recsys.errors import RecsysError

    try:
        main()
    except RecsysError as exc:
        raise SystemExit(f"error: {exc}") from None
