"""One result file comparing variants of a config (an ablation), from per-seed train_quality results.

    python benchmarks/variants.py --name sasrec_ml-1m-papers_variants_gpu \
        --variant "as configured before=benchmarks/results/gpu-2026-11-26/sasrec_ml-1m-papers_gpu_s4*.json" ...

Each variant: its seeds' mean and spread of test NDCG@10 / HR@10, epochs, seconds to the best epoch, and
what its config changes against the first variant's. The headline metrics are the best variant's.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_result  # noqa: E402
from train_quality import _deciding_config, summarize  # noqa: E402


def config_changes(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`section.key: value` for every setting of `other` that differs from `base`."""
    base, other = _deciding_config(base), _deciding_config(other)
    return {f"{section}.{key}": value for section, values in other.items() if isinstance(values, dict)
            for key, value in values.items() if base.get(section, {}).get(key) != value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="result file benchmarks/results/<name>.json")
    parser.add_argument("--variant", action="append", required=True, metavar="LABEL=GLOB",
                        help="a variant's label and the per-seed result files of its runs (repeatable)")
    parser.add_argument("--note", default="", help="how the runs were made")
    parser.add_argument("--command", default=None, help="the command that produced the runs")
    parser.add_argument("--commit", default=None, help="the commit the runs ran")
    args = parser.parse_args()

    variants, base_config, first, machine = [], None, None, None
    for spec in args.variant:
        label, _, pattern = spec.partition("=")
        parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in sorted(glob.glob(pattern))]
        if not parts:
            raise SystemExit(f"--variant {label}: no files match {pattern}")
        runs = sorted((r for d in parts for r in d["runs"]), key=lambda r: r["seed"])
        summary = summarize(parts[0]["config"], runs, max(d["wall_s"] for d in parts))
        base_config = base_config or parts[0]["config"]
        first = first or summary
        machine = machine or parts[0]["machine"]
        variants.append({"label": label, "changes": config_changes(base_config, parts[0]["config"]),
                         "metrics": summary["metrics"], "seeds": summary["seeds"],
                         "files": [Path(p).name for p in sorted(glob.glob(pattern))]})
    best = max(variants, key=lambda v: v["metrics"]["ndcg@10"])
    result = {**first, "benchmark": "variants", "model": f"{first['model']} variants",
              "metrics": {"ndcg@10": best["metrics"]["ndcg@10"], "hr@10": best["metrics"]["hr@10"],
                          **{f"ndcg@10 [{v['label']}]": v["metrics"]["ndcg@10"] for v in variants}},
              "best_variant": best["label"], "variants": variants, "note": args.note,
              "command": args.command or first["command"], "commit": args.commit or first["commit"],
              "machine": machine}
    result.pop("runs", None)
    print(write_result(args.name, result, RESULTS))


if __name__ == "__main__":
    main()
