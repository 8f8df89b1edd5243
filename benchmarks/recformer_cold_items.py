"""Cold items: a share of the items is held out of training ENTIRELY, then added by text; can the model rank them?

    python benchmarks/recformer_cold_items.py --config configs/recformer_ml-latest-small.yaml
    python benchmarks/recformer_cold_items.py --config configs/recformer_ml-1m-papers.yaml --dataset ml-1m \
        --data-path ../shared/data/ml-1m trainer.max_epochs=30

Protocol (`recsys.evaluation.cold_items`): `--share` of the items with at least `--min-interactions`
interactions is drawn with `--split-seed`; every interaction with them is removed from the log, and the model
trains on the rest as a custom dataset (its own leave-one-out split; those metrics are reported as
`known_test_*`). The held-out items are then added to the saved model with `add_items` (what `recsys index
add-items` runs). For each user who interacted with a held-out item, the history up to their first such item is
the query and that item the target; HR@K ranks the whole grown catalogue, the history excluded. `random_hr@K`
is the expectation of a random ranking of the same candidates. An id-based model (SASRec, ...) cannot take
part: it has no vector for an id it never trained on, so its hit rate on these targets is 0 by construction
and `recsys index add-items` refuses it. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, provenance, write_result  # noqa: E402
from recformer_transfer import device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/recformer_ml-latest-small.yaml", help="run config (YAML)")
    parser.add_argument("--dataset", default="ml-latest-small", help="MovieLens release to read")
    parser.add_argument("--data-path", default=None, help="its folder (default: embedded / prepared)")
    parser.add_argument("--share", type=float, default=0.1, help="share of the eligible items held out")
    parser.add_argument("--min-interactions", type=int, default=5, help="items with fewer are never held out")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the draw of held-out items")
    parser.add_argument("--name", default=None, help="result file (default: recformer_cold_items_<dataset>)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where <name>.json goes")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.max_epochs=30")
    args = parser.parse_args()

    from recsys.config import DataConfig
    from recsys.data.prepare import read_raw
    from recsys.evaluation.cold_items import cold_item_hit_rate, hold_out_items, write_training_files
    from recsys.retrieval.catalogue import add_items
    from recsys.retrieval.recommender import Recommender
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    raw = read_raw(DataConfig(name=args.dataset, path=args.data_path))
    split = hold_out_items(raw.interactions, raw.items, args.share, args.split_seed, args.min_interactions)
    data = write_training_files(split, raw.items, work / "data")
    cfg = load_run_config(args.config, [*args.overrides, *data, "trainer.progress_bar=false",
                                        f"tracking.output_dir={work / 'runs'}",
                                        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"])
    result = train(cfg)
    t0 = time.perf_counter()
    added = add_items(result.model_dir, work / "data" / "held_items.parquet")
    add_s = time.perf_counter() - t0
    rec = Recommender.load(added.model_dir, device=device(cfg.trainer.accelerator))
    cold = cold_item_hit_rate(rec, split.targets)
    m = result.metrics
    metrics = {**cold, "held_out_items": float(split.held_items.height), "add_items_s": add_s,
               "known_test_ndcg@10": m["test_ndcg@10"], "known_test_hr@10": m["test_hr@10"],
               "epochs_run": m["epochs_run"], "epoch_s": m.get("epoch_s")}
    path = write_result(args.name or f"recformer_cold_items_{args.dataset}", {
        "benchmark": "recformer_cold_items",
        "dataset": f"{args.dataset}, {args.share:.0%} of items with >= {args.min_interactions} interactions held out",
        "preset": cfg.data.preset,
        "model": cfg.model_name,
        "headline": ["hr@10", "random_hr@10", "hr@50", "random_hr@50", "n_users", "held_out_items",
                     "known_test_ndcg@10", "add_items_s"],
        "metrics": metrics,
        "notes": "id-based models (sasrec, bert4rec, gru4rec, popularity) score 0 on these targets by "
                 "construction: the held-out ids are not in their catalogue, and add-items refuses them",
        "split_seed": args.split_seed,
        "config": cfg.to_dict(),
        "seeds": [cfg.trainer.seed],
        "wall_s": time.perf_counter() - started,
        **provenance(),
    }, args.results_dir)
    print(f"{path}: {metrics}", flush=True)


if __name__ == "__main__":
    main()
