"""Does `recsys tune` find a better SASRec on ml-100k than the shipped config, within 30 minutes on 2 cores?

Three steps, each the command a user types, in WORK (a step whose output is already there is not run again):
  1. recsys train of configs/sasrec_ml-100k.yaml (the shipped default): its validation and test metrics
  2. recsys tune of the same config for --max-minutes (validation only; the test split is never read)
  3. recsys train of the study's best.yaml: its test metrics, measured only now, after the search

    python benchmarks/tune_sasrec.py --work /tmp/tunebench --data ../shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import provenance, write_result  # noqa: E402

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "sasrec_ml-100k.yaml"
RECSYS = [sys.executable, "-m", "recsys.cli"]
KEYS = ("valid_ndcg@10", "valid_hr@10", "test_ndcg@10", "test_hr@10", "best_epoch", "epochs_run", "fit_s")


def run(command: list[str], log: Path) -> float:
    """Run a step (nice'd: the machine is shared), its output in `log`; seconds it took."""
    started = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(["nice", "-n", "10", *command], stdout=out, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    return time.perf_counter() - started


def trained_metrics(runs: Path) -> dict[str, float]:
    (metrics,) = sorted(runs.glob("*/model/metrics.json"))  # one run per folder: the step's own
    values = json.loads(metrics.read_text())
    return {key: values[key] for key in KEYS if key in values}


def train_step(work: Path, name: str, config: Path, data: str, threads: int) -> tuple[dict[str, float], float | None]:
    runs = work / f"{name}-runs"
    seconds = None
    if not list(runs.glob("*/model/metrics.json")):
        seconds = run([*RECSYS, "train", "--config", str(config), f"data.path={data}", f"trainer.threads={threads}",
                       "trainer.progress_bar=false", f"tracking.output_dir={runs}",
                       f"tracking.tracking_uri=sqlite:///{work / f'{name}-mlflow.db'}"], work / f"{name}.log")
    return trained_metrics(runs), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", required=True, help="the ml-100k folder")
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--trial-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="tune_sasrec_ml-100k", help="result file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    default, default_s = train_step(work, "default", CONFIG, args.data, args.threads)
    study = work / "study"
    tune_s = None
    if not (study / "best.yaml").is_file():
        tune_s = run([*RECSYS, "tune", str(CONFIG), f"data.path={args.data}", f"trainer.threads={args.threads}",
                      "--max-minutes", f"{args.max_minutes:g}", "--trial-minutes", f"{args.trial_minutes:g}",
                      "--study-dir", str(study)], work / "tune.log")
    import optuna

    trials = optuna.load_study(study_name="recsys-tune", storage=f"sqlite:///{study / 'study.db'}").trials
    best_trial = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    best, best_s = train_step(work, "best", study / "best.yaml", args.data, args.threads)
    states = [t.state.name for t in trials]
    result = {
        "benchmark": "tune_sasrec", "dataset": "ml-100k", "preset": "raw", "split": "leave_one_out", "model": "sasrec",
        "headline": ["default_valid_ndcg@10", "best_valid_ndcg@10", "default_test_ndcg@10", "best_test_ndcg@10",
                     "default_test_hr@10", "best_test_hr@10", "trials"],
        "metrics": {**{f"default_{k}": v for k, v in default.items()}, **{f"best_{k}": v for k, v in best.items()},
                    "best_trial_valid_ndcg@10": best_trial.value, "trials": len(trials),
                    "trials_complete": states.count("COMPLETE"), "trials_pruned": states.count("PRUNED"),
                    "trials_failed": states.count("FAIL")},
        "best_trial": best_trial.number, "best_params": best_trial.params,
        "trial_seconds": [round(t.duration.total_seconds(), 1) for t in trials if t.duration is not None],
        "protocol": f"recsys tune {CONFIG.relative_to(ROOT)} trainer.threads={args.threads} --max-minutes "
                    f"{args.max_minutes:g} --trial-minutes {args.trial_minutes:g} (default search space "
                    "configs/search/sasrec.yaml, TPE seed 42, median pruner); then recsys train of the shipped config "
                    "and of best.yaml, whose test metrics are read only after the search",
        "seeds": [42], "epochs_counted_from": 1,
        # each step's wall seconds when this invocation ran it (None: its output was there already), and the
        # study's own span, from the first trial's start to the last one's end
        "wall_s": {"default_train": default_s, "tune": tune_s, "best_train": best_s,
                   "study_trials_span": (max(t.datetime_complete for t in trials if t.datetime_complete)
                                         - min(t.datetime_start for t in trials)).total_seconds()},
        **provenance(),
    }
    print(json.dumps(result["metrics"], indent=2))
    print(write_result(args.name, result))


if __name__ == "__main__":
    main()
