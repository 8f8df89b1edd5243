"""Benchmark of out-of-core preparation (data.streaming): peak RSS and wall time on synthetic ML-32M-schema logs.

    python benchmarks/data_prepare_streaming.py [--rows 32000000] [--large-rows 200000000] [--skip-large]
        [--skip-in-memory] [--tmp DIR] [--update]

A synthetic ratings.csv with ML-32M's schema (userId,movieId,rating,timestamp, sorted by user like the
release) and its users and items (200,948 and 87,585; Zipf-like item popularity, lognormal user activity) is
generated with numpy in chunks straight to disk (never whole in memory; not timed), then prepared with the
`raw` preset in a child process whose wall time and peak RSS (ru_maxrss) are reported: `--rows` (32M, ML-32M's
size) both out of core and in memory, `--large-rows` (200M) out of core only. Each CSV is deleted after its
runs. --update keeps the metrics of sizes not measured this time from the existing result file and adds this
run to its `runs` list (each run's command, commit, sizes and time). Targets (issue 25): 200M rows with a peak of at most 6 GB, 32M rows in at most 30 s.
Writes benchmarks/results/data_prepare_streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, provenance, write_result  # noqa: E402
from data_prepare import SEED, write_synthetic  # noqa: E402

N_USERS = 200_948  # ml-32m
N_ITEMS = 87_585
LAST_TS = 1_697_164_147
TARGETS = {"streaming_200m_peak_rss_gb": 6.0, "streaming_32m_prepare_s": 30.0}
HEADLINE = ("peak_rss_gb", "cpu_s", "prepare_s", "load_avg_1min_before")
"""Metric suffixes listed first (the README's table shows a result's first metrics)."""

CHILD = """
import json, os, resource, sys, time
from recsys.config import DataConfig
from recsys.data.prepare import prepare_dataset
streaming = sys.argv[3] == "streaming"
start = time.perf_counter()
ds = prepare_dataset(DataConfig(name="ml-32m", path=sys.argv[1], cache_dir=sys.argv[2], streaming=streaming))
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
peak_kb = usage.ru_maxrss
print(json.dumps({"s": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_gb": peak_kb / 1024**2,
                  "users": ds.n_users, "items": ds.n_items,
                  "interactions": ds.n_interactions, "duplicates_dropped": ds.duplicates_dropped,
                  "load_avg_1min_after": os.getloadavg()[0]}))
"""


def prepare_in_child(folder: Path, cache: Path, mode: str) -> dict[str, float | int]:
    """Prepare the synthetic release in a fresh process (its own ru_maxrss); the cache folder is removed after."""
    load_before = os.getloadavg()[0]
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(cache), mode],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} prepare failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(cache, ignore_errors=True)
    child = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{mode}: {json.dumps(child)}", file=sys.stderr)
    return {**child, "load_avg_1min_before": load_before}


def measure(rows: int, modes: list[str], tmp_root: str | None) -> dict[str, float | int]:
    """Generate `rows` synthetic ratings (untimed), prepare them in each mode, delete them."""
    metrics: dict[str, float | int] = {}
    label = f"{rows // 1_000_000}m"
    with tempfile.TemporaryDirectory(prefix="bench-stream-", dir=tmp_root) as tmp:
        folder = Path(tmp) / "ml-32m"
        folder.mkdir()
        start = time.perf_counter()
        write_synthetic(folder, rows, n_users=N_USERS, n_items=N_ITEMS, last_ts=LAST_TS)
        size_gib = (folder / "ratings.csv").stat().st_size / 1024**3
        print(f"synthetic: {rows:,} rows, {size_gib:.2f} GiB CSV, generated in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
        metrics[f"rows_{label}"] = rows
        metrics[f"csv_gib_{label}"] = round(size_gib, 3)
        for mode in modes:
            child = prepare_in_child(folder, Path(tmp) / f"cache-{mode}", mode)
            prefix = f"{mode}_{label}"
            metrics |= {f"{prefix}_prepare_s": round(child["s"], 2), f"{prefix}_cpu_s": round(child["cpu_s"], 1),
                        f"{prefix}_peak_rss_gb": round(child["peak_gb"], 3),
                        f"{prefix}_users_kept": child["users"], f"{prefix}_items_kept": child["items"],
                        f"{prefix}_interactions_kept": child["interactions"],
                        f"{prefix}_load_avg_1min_before": round(child["load_avg_1min_before"], 2),
                        f"{prefix}_load_avg_1min_after": round(child["load_avg_1min_after"], 2)}
    return metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32_000_000, help="rows of the ML-32M-size log")
    parser.add_argument("--large-rows", type=int, default=200_000_000, help="rows of the large log (out of core only)")
    parser.add_argument("--skip-large", action="store_true", help="only the --rows log")
    parser.add_argument("--skip-in-memory", action="store_true", help="no in-memory run of the --rows log")
    parser.add_argument("--tmp", default=None, help="folder for the generated logs and caches (default: $TMPDIR)")
    parser.add_argument("--update", action="store_true", help="keep the existing result's other sizes")
    args = parser.parse_args()
    wall = time.perf_counter()
    metrics = measure(args.rows, ["streaming"] + ([] if args.skip_in_memory else ["in_memory"]), args.tmp)
    if not args.skip_large:
        metrics |= measure(args.large_rows, ["streaming"], args.tmp)
    sizes = [args.rows] + ([] if args.skip_large else [args.large_rows])
    first = [k for suffix in HEADLINE for k in reversed(metrics) if k.endswith(suffix)]
    metrics = {**{k: metrics[k] for k in first}, **metrics}
    runs = [{"sizes": sizes, "command": provenance()["command"], "commit": provenance()["commit"],
             "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]
    if args.update and (RESULTS / "data_prepare_streaming.json").is_file():
        earlier = json.loads((RESULTS / "data_prepare_streaming.json").read_text())
        runs = earlier.get("runs", [{"sizes": "all", "command": earlier["command"], "commit": earlier["commit"]}]) + runs
        metrics = {**earlier["metrics"], **metrics}
        sizes = sorted({*sizes, *[m for m in (earlier["metrics"].get("rows_32m"), earlier["metrics"].get("rows_200m"))
                                  if m]})
    report = {
        "benchmark": "data_prepare_streaming",
        "dataset": f"synthetic, ml-32m schema ({N_USERS:,} users, {N_ITEMS:,} items), "
                   + " and ".join(f"{n:,}" for n in sizes) + " rows",
        "preset": "raw",
        "model": None,
        "metrics": metrics,
        "targets": TARGETS,
        "seeds": [SEED],
        "wall_s": round(time.perf_counter() - wall, 1),
        **provenance(),
        "runs": runs,
        "notes": "2 cores shared with other engineers' jobs while this ran (the 1-minute load averages before and "
                 "after each run are in the metrics), so timings are noisy upper bounds. Each prepare runs in a "
                 "child process (its own ru_maxrss) and includes writing the Parquet cache; CSV generation is not "
                 "timed. The peak includes the prepared result itself (sequences, 12 bytes an interaction).",
    }
    path = write_result("data_prepare_streaming", report)
    print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
