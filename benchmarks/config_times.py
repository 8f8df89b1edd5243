"""How long each shipped config takes: seconds per training epoch and per validation, measured, per config.

    python benchmarks/config_times.py --shared ../shared            # every config in configs/
    python benchmarks/config_times.py --shared ../shared configs/gru4rec_ml-100k.yaml

Each config trains `--epochs` epochs (tracking off, no early stopping) on its own data (ml-1m and ml-100k from
`--shared`/data) and its model's setup time (data preparation, building, Recformer's text encoding) is timed
apart from the epochs. Where a `train_quality` result of the config exists, its seconds to the best epoch and
its epochs are copied beside (a whole run's time). Writes benchmarks/results/config_times.json after every
config; the config headers quote it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import recsys  # noqa: E402,F401  (first: it sets OpenMP's waiting before torch loads)

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, command, commit, machine, write_result  # noqa: E402

ROOT = Path(__file__).parents[1]
DATA_FOLDERS = {"ml-1m": "ml-1m", "ml-100k": "ml-100k"}


def time_config(config: Path, shared: Path, epochs: int) -> dict:
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    with tempfile.TemporaryDirectory() as runs:
        overrides = [f"trainer.max_epochs={epochs}", "trainer.patience=0", "trainer.cooldown_epochs=0",
                     "tracking.enabled=false", "trainer.progress_bar=false", f"tracking.output_dir={runs}"]
        cfg = load_run_config(config, overrides)
        folder = DATA_FOLDERS.get(cfg.data.name)
        if folder:
            cfg = load_run_config(config, [*overrides, f"data.path={shared / 'data' / folder}"])
        started = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - started
    metrics = result.metrics
    row = {"config": str(config.relative_to(ROOT)), "epochs": epochs, "wall_s": wall,
           "epoch_s": metrics.get("epoch_s"), "val_epoch_s": metrics.get("val_epoch_s"),
           "max_epochs": load_run_config(config, []).trainer.max_epochs}
    row.update(whole_run(config))
    print(json.dumps(row), flush=True)
    return row


def whole_run(config: Path) -> dict:
    """Seconds to the best epoch and epochs of this config's train_quality result (its `variant` is the
    config's path), the CPU one where there are both."""
    name = str(config.relative_to(ROOT))
    found = []
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("benchmark") == "train_quality" and result.get("variant") == name:
            found.append((bool(result.get("machine", {}).get("gpu")), path.name, result))
    if not found:
        return {}
    gpu, file, result = min(found, key=lambda f: f[0])
    m = result["metrics"]
    return {"result": file, "fit_s_to_best_epoch": m.get("fit_s_to_best_epoch"), "best_epoch": m.get("best_epoch"),
            "result_on": result["machine"]["gpu"] if gpu else f"{result['machine'].get('cores')} CPU cores"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path, help="configs to time (default: all in configs/)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per config")
    args = parser.parse_args()
    configs = [c.resolve() for c in args.configs] or sorted((ROOT / "configs").glob("*.yaml"))
    path = RESULTS / "config_times.json"
    rows = {r["config"]: r for r in json.loads(path.read_text())["runs"]} if path.is_file() else {}
    started = time.perf_counter()
    for config in configs:
        row = time_config(config, args.shared, args.epochs)
        rows[row["config"]] = row
        write_result("config_times", {
            "benchmark": "config_times", "dataset": "per config", "model": "per config",
            "metrics": {Path(k).stem + "_epoch_s": v["epoch_s"] for k, v in sorted(rows.items())},
            "runs": [rows[k] for k in sorted(rows)],
            "notes": "epoch_s: one training epoch, validation apart (val_epoch_s); wall_s: the whole run of "
                     "`epochs` epochs with setup and final evaluation, no tracking.",
            "seeds": [42], "wall_s": time.perf_counter() - started,
            "machine": machine(), "command": command(), "commit": commit(),
        })


if __name__ == "__main__":
    main()
