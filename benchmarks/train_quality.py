"""Quality benchmark: train a config to convergence for several seeds, report test metrics (mean, spread).

    python benchmarks/train_quality.py --name sasrec_ml-1m-papers --config configs/sasrec_ml-1m-papers.yaml \
        --seeds 42 43 44 data.path=../shared/data/ml-1m

Protocol: whatever the config says (ml-1m papers' preset: leave-one-out, full ranking over all 3,416 items,
history excluded), early stopping on validation NDCG@10, test metrics of the best validation epoch.
The result file is rewritten after every seed, so a stopped benchmark still reports the seeds it finished.

`--watch-test ndcg@10=0.182` also scores the test split after every epoch, only to time the way to a
published figure ("time to NDCG@10 0.182"): model selection still uses validation alone, and the seconds
spent scoring the test split are left out of that time. Seeds run in separate processes (e.g. side by side
on one GPU) each write their own file; `--merge NAME PART...` combines such files into one result.
`--resume RUN_DIR` continues a run this script started (its folder under the tracking.output_dir that the
result file's config records) from its last checkpoint, e.g. with a larger trainer.max_minutes: the run's own config and seed, the
overrides on top; its epoch times carry over, so time to the best epoch counts the whole run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import recsys  # noqa: F401  (first: OpenMP's passive waiting must be asked for before torch loads, recsys.cpus)
import lightning as L

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
    # Raw preset (3,706 items, stable sort), asked at the target's timestamp (time context: target).
    "hstu": {"RecTools HSTU tutorial, HSTU 2 blocks, raw preset, time context": [0.1880, 0.3226],
             "RecTools HSTU tutorial, HSTU-large 8 blocks, raw preset, time context": [0.2164, 0.3642],
             "transformer_benchmark, FuXi-alpha, raw preset": [0.1813, 0.3164]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="result file benchmarks/results/<name>.json")
    parser.add_argument("--config", help="run config (YAML); required unless --merge or --resume")
    parser.add_argument("--seeds", nargs="+", default=["42", "43", "44"],
                        help="seeds, one run each (config overrides may follow them directly)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="start no new seed after this many minutes")
    parser.add_argument("--append", action="store_true",
                        help="add these seeds to the runs already in the result file (e.g. seeds run in parallel)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where <name>.json goes")
    parser.add_argument("--watch-test", metavar="METRIC=VALUE", default=None,
                        help="score the test split after every epoch and time the way to METRIC >= VALUE")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", default=None,
                        help="continue this run folder from its last checkpoint (its config and seed; "
                             "overrides on top, e.g. trainer.max_minutes=185)")
    parser.add_argument("--merge", nargs="+", metavar="PART", default=None,
                        help="instead of training: combine these result files' runs into <name>.json")
    parser.add_argument("--note", default=None, help="with --merge: a note kept in the result (e.g. how it was run)")
    parser.add_argument("--commit", default=None, help="with --merge: the commit the parts ran (if theirs is off)")
    parser.add_argument("--command", default=None, help="with --merge: the command that produced the parts")
    parser.add_argument("--allow-differing", nargs="+", metavar="SECTION.KEY", default=[],
                        help="with --merge: config keys the parts may differ in (e.g. trainer.max_minutes); "
                             "each part's value is kept in the result")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    args = parser.parse_args()
    if args.merge:
        merge(args.name, [Path(p) for p in args.merge], args.results_dir,
              {k: v for k, v in (("note", args.note), ("commit", args.commit), ("command", args.command)) if v},
              args.allow_differing)
        return
    if not args.config and not args.resume:
        parser.error("--config is required (unless --merge or --resume)")
    # argparse gives `--seeds 42 43 data.path=...` all to --seeds (nargs="+" takes every non-option after
    # it), so overrides written right after the seeds are split off here.
    args.overrides = [*[s for s in args.seeds if "=" in s], *args.overrides]
    try:
        args.seeds = [int(s) for s in args.seeds if "=" not in s]
    except ValueError as exc:
        parser.error(f"--seeds: {exc}")

    from recsys.run_config import load_run_config
    from recsys.training.resume import resume_config

    started = time.perf_counter()
    if args.resume:
        cfg = resume_config(args.resume, [*args.overrides, "trainer.progress_bar=false"])
        runs = [run_seed(cfg, args.watch_test, resume=args.resume)]
        write_result(args.name, summarize(cfg.to_dict(), runs, time.perf_counter() - started), args.results_dir)
        return
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    runs: list[dict] = []
    for seed in args.seeds:
        if args.budget_min is not None and time.perf_counter() - started > args.budget_min * 60:
            break
        cfg = load_run_config(args.config, [*args.overrides, f"trainer.seed={seed}", "trainer.progress_bar=false",
                                            f"tracking.output_dir={work / 'runs'}",
                                            f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"])
        runs.append(run_seed(cfg, args.watch_test))
        earlier = earlier_runs(args.results_dir, args.name, {r["seed"] for r in runs}) if args.append else []
        write_result(args.name, summarize(cfg.to_dict(), earlier + runs, time.perf_counter() - started),
                     args.results_dir)


def run_seed(cfg: Any, watch_test: str | None, resume: Path | None = None) -> dict[str, Any]:
    """Train (or, with `resume`, continue) one run and return its line of the result."""
    from recsys.training.train import train

    seed = cfg.trainer.seed
    t0 = time.perf_counter()
    watch = TestWatch(*parse_target(watch_test)) if watch_test else None
    result = train(cfg, resume=resume, callbacks=[EpochLog(seed), *([watch] if watch else [])])
    m = result.metrics
    run = {"seed": seed, "ndcg@10": m["test_ndcg@10"], "hr@10": m["test_hr@10"],
           "mrr@10": m["test_mrr@10"], "valid_ndcg@10": m["valid_ndcg@10"],
           "best_epoch": int(m["best_epoch"]), "epochs_run": int(m["epochs_run"]),
           "epoch_s": m.get("epoch_s"), "val_epoch_s": m.get("val_epoch_s"),
           "fit_s": m.get("fit_s"), "fit_s_to_best_epoch": fit_s_to_epoch(result.history, m["best_epoch"] - 1),  # rows count from 0
           "wall_s": time.perf_counter() - t0,
           # The process's peak so far (seeds run one after another in it: the largest seed's peak).
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           **{f"time_{context}_{metric}": m[f"test_time_{context}_{metric}"]
              for context in ("none", "target") for metric in ("ndcg@10", "hr@10", "mrr@10")
              if f"test_time_{context}_{metric}" in m},  # a time-aware model: the test asked both ways
           **({"resumed_from": str(resume)} if resume else {}),
           **(watch.summary() if watch else {})}
    print(f"seed {seed}: {run}", flush=True)
    return run


def parse_target(text: str) -> tuple[str, float]:
    metric, _, value = text.partition("=")
    try:
        return metric, float(value)
    except ValueError:
        raise SystemExit(f"--watch-test: expected METRIC=VALUE, e.g. ndcg@10=0.182, got {text!r}") from None


def fit_s_to_epoch(history: list[dict[str, float]], epoch: float) -> float | None:
    """Seconds of training and validation up to the end of `epoch` (the best one: what early stopping
    would have needed had it known), from the per-epoch times the run recorded."""
    rows = [r for r in history if r["epoch"] <= epoch]
    return sum(r.get("epoch_train_s", 0.0) + r.get("epoch_val_s", 0.0) for r in rows) if rows else None


class EpochLog(L.Callback):
    """One line per epoch on stdout (seed, epoch, loss, validation NDCG@10, seconds since the fit began),
    so that a long or remote benchmark can be followed and a killed one still leaves its curve."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.started = time.perf_counter()
        self.validated = False

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.validated = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        m = trainer.callback_metrics
        # Epochs that do not validate (val_every > 1) still see the last validation's metrics: show none.
        val = float(m.get("val_ndcg@10", float("nan"))) if self.validated else float("nan")
        self.validated = False
        print(f"seed {self.seed} epoch {trainer.current_epoch + 1} loss {float(m.get('train_loss', float('nan'))):.4f} "
              f"val_ndcg@10 {val:.4f} t {time.perf_counter() - self.started:.1f}s", flush=True)


class TestWatch(L.Callback):
    """Scores the test split after each validation, to time the way to a target. Observation only: nothing
    here feeds model selection, evaluation draws no random numbers (the run's trajectory is unchanged),
    and its own time is subtracted from the clock."""

    def __init__(self, metric: str, target: float) -> None:
        self.metric, self.target = metric, target
        self.curve: list[tuple[int, float, float]] = []  # (epoch, fit seconds, test value)
        self.excluded = 0.0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        from recsys.evaluation.runner import evaluate_loader

        now = time.perf_counter()
        value = evaluate_loader(pl_module.model, trainer.datamodule.test_dataloader(), pl_module.n_items,
                                time_context=pl_module.time_context)[self.metric]
        self.curve.append((trainer.current_epoch, now - self.started - self.excluded, value))
        self.excluded += time.perf_counter() - now

    def summary(self) -> dict[str, Any]:
        reached = next(((epoch, s) for epoch, s, v in self.curve if v >= self.target), None)
        return {"watched": f"test {self.metric} >= {self.target}",
                "target_epoch": reached[0] if reached else None,
                "target_fit_s": reached[1] if reached else None,
                "test_curve": [[e, round(s, 2), round(v, 5)] for e, s, v in self.curve]}


def earlier_runs(directory: Path, name: str, replaced: set[int]) -> list[dict]:
    """Runs already in <directory>/<name>.json, except those of seeds run again now."""
    path = directory / f"{name}.json"
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text(encoding="utf-8")).get("runs", []) if r["seed"] not in replaced]


def merge(name: str, parts: list[Path], directory: Path, extra: dict[str, Any],
          allowed: list[str] | tuple[str, ...] = ()) -> None:
    """One result from several (e.g. one process per seed): runs pooled, statistics recomputed; the
    machine and commit of the first part, each part's command kept. The parts must share one config, but
    for the `allowed` keys ("section.key"), whose values per part are recorded."""
    loaded = [json.loads(p.read_text(encoding="utf-8")) for p in parts]
    reference = _deciding_config(loaded[0]["config"], allowed)
    differing = [p.name for p, d in zip(parts, loaded) if _deciding_config(d["config"], allowed) != reference]
    if differing:
        raise SystemExit(f"--merge: {', '.join(differing)} ran another config than {parts[0].name}")
    if allowed:
        extra = {**extra, "differing": {key: [_lookup(d["config"], key) for d in loaded] for key in allowed}}
    runs = sorted((r for d in loaded for r in d["runs"]), key=lambda r: r["seed"])
    result = summarize(loaded[0]["config"], runs, max(d["wall_s"] for d in loaded))
    result.update({"machine": loaded[0]["machine"], "commit": loaded[0]["commit"], "command": loaded[0]["command"],
                   "commands": [d["command"] for d in loaded], "merged_from": [p.name for p in parts], **extra})
    print(write_result(name, result, directory))


def _deciding_config(config: dict[str, Any], allowed: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The parts of a config that decide the result: not the seed, not the run's own scratch folders, not
    the keys the caller allows to differ."""
    kept = {**config, "trainer": {k: v for k, v in config["trainer"].items() if k != "seed"}, "tracking": None}
    for key in allowed:
        section, _, name = key.partition(".")
        if not isinstance(kept.get(section), dict) or name not in kept[section]:
            raise SystemExit(f"--allow-differing: no config key {key!r}")
        kept[section] = {k: v for k, v in kept[section].items() if k != name}
    return kept


def _lookup(config: dict[str, Any], key: str) -> Any:
    section, _, name = key.partition(".")
    return config[section][name]


def summarize(config: dict[str, Any], runs: list[dict], wall_s: float) -> dict:
    def spread(key: str) -> dict:
        values = [r[key] for r in runs if r.get(key) is not None]  # e.g. no epoch_s for a count-fitted model
        if not values:
            return {"mean": None, "std": None, "min": None, "max": None}
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    ndcg, hr = spread("ndcg@10"), spread("hr@10")
    model = config["model"]["name"]
    return {
        "benchmark": "train_quality",
        "dataset": config["data"]["name"],
        "preset": config["data"]["preset"],
        "split": config["data"]["split"],
        "model": model,
        # How a time-aware model was asked at evaluation (evaluation.time_context); metrics time_none_* and
        # time_target_* give the test both ways. Absent for models that read no timestamps.
        **({"time_context": config.get("evaluation", {}).get("time_context", "none")}
           if any(key.startswith("time_") for key in runs[0]) else {}),
        "config": config,
        "epochs_counted_from": 1,  # best_epoch: 1 is the first epoch (results without this field count from 0)
        "metrics": {"ndcg@10": ndcg["mean"], "hr@10": hr["mean"], "ndcg@10_std": ndcg["std"],
                    "hr@10_std": hr["std"], "mrr@10": spread("mrr@10")["mean"],
                    "epoch_s": spread("epoch_s")["mean"], "best_epoch": spread("best_epoch")["mean"],
                    "epochs_run": spread("epochs_run")["mean"], "wall_s_per_seed": spread("wall_s")["mean"],
                    "fit_s_to_best_epoch": spread("fit_s_to_best_epoch")["mean"],
                    "peak_rss_mb": spread("peak_rss_mb")["max"],
                    **{key: spread(key)["mean"] for key in runs[0] if key.startswith("time_")},
                    **({"target_fit_s": spread("target_fit_s")["mean"],
                        "target_reached": sum(r["target_fit_s"] is not None for r in runs)}
                       if any("watched" in r for r in runs) else {})},
        "runs": runs,
        "published": PUBLISHED.get(model, {}),
        "seeds": [r["seed"] for r in runs],
        "wall_s": wall_s,
        "machine": machine(),
        "command": command(),
        "commit": commit(),
    }


if __name__ == "__main__":
    from recsys.errors import RecsysError

    try:
        main()
    except RecsysError as exc:  # bad input (a config, a run folder, the data): its one line, no traceback
        raise SystemExit(f"error: {exc}") from None
