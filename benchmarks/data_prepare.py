"""Benchmark of data preparation: ml-1m cold and cached, and a synthetic 25M-row log in ml-25m's format.

    python benchmarks/data_prepare.py [--rows 25000000] [--shared-data /work/shared/data] [--skip-synthetic]

(1) ml-1m from the raw files (cold: a fresh cache folder each run, the cache write included; median of
3), then the cached reload (median of 3). (2) A synthetic ratings.csv with ml-25m's schema and scale
(~162k users, ~59k items, Zipf-like item popularity, lognormal user activity), generated with numpy in
chunks (not timed), then prepared in a child process whose wall time and peak RSS (ru_maxrss) are
reported. Targets: ml-1m < 3 s, cached < 0.3 s, 25M rows < 60 s with a peak under 6 GB.
Writes benchmarks/results/data_prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from recsys.config import DataConfig
from recsys.data.prepare import dataset_stats, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "data_prepare.json"
SEED = 0
N_USERS = 162_541  # ml-25m
N_ITEMS = 59_047
FIRST_TS, LAST_TS = 789_652_009, 1_574_327_703
RATINGS = np.arange(1, 11) / 2  # 0.5 .. 5.0
TARGETS = {"ml1m_prepare_s": 3.0, "ml1m_cached_s": 0.3, "synthetic25m_prepare_s": 60.0, "synthetic25m_peak_rss_gb": 6.0}
RATING_P = np.array([0.016, 0.033, 0.017, 0.068, 0.063, 0.197, 0.131, 0.266, 0.085, 0.124])


def time_ml1m(shared: Path, repeats: int = 3) -> dict[str, float]:
    """Median cold prepare (fresh cache each time) and median cached reload of ml-1m, in seconds."""
    cold, cached = [], []
    with tempfile.TemporaryDirectory(prefix="bench-ml1m-") as tmp:
        for run in range(repeats):
            cfg = DataConfig(name="ml-1m", path=str(shared / "ml-1m"), cache_dir=f"{tmp}/cold{run}")
            start = time.perf_counter()
            ds = prepare_dataset(cfg)
            cold.append(time.perf_counter() - start)
        for _ in range(repeats):
            start = time.perf_counter()
            again = prepare_dataset(cfg)
            cached.append(time.perf_counter() - start)
    if (again.n_users, again.n_items, again.n_interactions) != (6_040, 3_706, 1_000_209):
        raise RuntimeError(f"ml-1m counts are off: {dataset_stats(ds)}")
    return {"ml1m_prepare_s": statistics.median(cold), "ml1m_cached_s": statistics.median(cached)}


def write_synthetic(
    folder: Path, rows: int, n_users: int = N_USERS, n_items: int = N_ITEMS, last_ts: int = LAST_TS,
    chunk_rows: int = 5_000_000,
) -> None:
    """ratings.csv (userId,movieId,rating,timestamp; sorted by user like ml-25m) and a matching movies.csv,
    written about `chunk_rows` rows at a time (a 200M-row log is never whole in memory)."""
    rng = np.random.default_rng(SEED)
    activity = rng.lognormal(mean=0.0, sigma=1.1, size=n_users)
    per_user = np.maximum(1, np.floor(activity / activity.sum() * rows)).astype(np.int64)
    per_user[np.argsort(-activity)[: rows - int(per_user.sum())]] += 1  # hit `rows` exactly
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9  # Zipf-like
    popularity /= popularity.sum()
    movie_ids = np.sort(rng.choice(np.arange(1, 210_000), size=n_items, replace=False))  # sparse like ml-25m
    shuffled = rng.permutation(movie_ids)  # popularity rank -> movie id
    chunk_users = 20_000 if rows <= 25_000_000 else max(1, n_users * chunk_rows // rows)  # 25M: as measured before
    with open(folder / "ratings.csv", "wb") as out:
        out.write(b"userId,movieId,rating,timestamp\n")
        for first in range(0, n_users, chunk_users):
            counts = per_user[first : first + chunk_users]
            n = int(counts.sum())
            users = np.repeat(np.arange(first + 1, first + 1 + counts.size), counts)
            start = np.repeat(rng.integers(FIRST_TS, last_ts - 10**7, size=counts.size), counts)
            chunk = pl.DataFrame(
                {
                    "userId": users,
                    "movieId": shuffled[rng.choice(n_items, size=n, p=popularity)],
                    "rating": rng.choice(RATINGS, size=n, p=RATING_P / RATING_P.sum()),
                    "timestamp": start + rng.integers(0, 10**7, size=n),
                }
            ).sort("userId", "timestamp")
            chunk.write_csv(out, include_header=False)
    titles = pl.DataFrame({"movieId": movie_ids, "title": [f"Movie {i} (2000)" for i in movie_ids], "genres": "Drama"})
    titles.write_csv(folder / "movies.csv")


CHILD = """
import json, resource, sys, time
from recsys.config import DataConfig
from recsys.data.prepare import prepare_dataset
start = time.perf_counter()
ds = prepare_dataset(DataConfig(name="ml-25m", path=sys.argv[1], cache_dir=sys.argv[2]))
elapsed = time.perf_counter() - start
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"s": elapsed, "peak_gb": peak_kb / 1024**2, "users": ds.n_users, "items": ds.n_items,
                  "interactions": ds.n_interactions}))
"""


def time_synthetic(rows: int) -> dict[str, float | int]:
    """Generate the synthetic log (untimed), then prepare it in a child process (timed, peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="bench-synth-", dir=os.environ.get("BENCH_TMP")) as tmp:
        folder = Path(tmp) / "ml-25m"
        folder.mkdir()
        start = time.perf_counter()
        write_synthetic(folder, rows)
        generated = time.perf_counter() - start
        size_gb = (folder / "ratings.csv").stat().st_size / 1024**3
        print(f"synthetic: {rows:,} rows, {size_gb:.2f} GiB CSV, generated in {generated:.0f} s", file=sys.stderr)
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder), str(Path(tmp) / "cache")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        child = json.loads(result.stdout.strip().splitlines()[-1])
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "synthetic25m_prepare_s": child["s"],
        "synthetic25m_peak_rss_gb": child["peak_gb"],
        "synthetic25m_rows": rows,
        "synthetic25m_users_kept": child["users"],
        "synthetic25m_items_kept": child["items"],
        "synthetic25m_interactions_kept": child["interactions"],
        "synthetic25m_csv_gib": size_gb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=25_000_000, help="rows of the synthetic log")
    parser.add_argument("--shared-data", default=str(ROOT.parent / "shared" / "data"), help="folder with ml-1m/")
    parser.add_argument("--skip-synthetic", action="store_true", help="only time ml-1m")
    parser.add_argument("--out", default=str(RESULTS), help="result JSON")
    args = parser.parse_args()
    wall = time.perf_counter()
    metrics: dict[str, float | int] = dict(time_ml1m(Path(args.shared_data)))
    print(json.dumps(metrics), file=sys.stderr)
    if not args.skip_synthetic:
        metrics |= time_synthetic(args.rows)
    report = {
        "benchmark": "data_prepare",
        "dataset": {"ml1m": "ml-1m", "synthetic": f"synthetic, ml-25m schema, {args.rows:,} rows"},
        "preset": "raw",
        "model": None,
        "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        "targets": TARGETS,
        "seeds": [SEED],
        "wall_s": round(time.perf_counter() - wall, 1),
        "machine": {
            "cores": os.cpu_count(),
            "gpu": None,
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "polars": pl.__version__,
        },
        "command": "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:]),
        "commit": _commit(),
        "notes": "2 cores shared with other engineers' jobs while this ran, so timings are noisy upper bounds. "
        "Cold ml-1m includes writing the Parquet cache; the synthetic run prepares in a child process "
        "(its own ru_maxrss), CSV generation not timed.",
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["metrics"], indent=2))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
