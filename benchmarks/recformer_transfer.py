"""Recformer on ML-1M, then applied with NO retraining to another catalogue (ml-latest-small), against the
popularity baseline fitted on that catalogue itself.

    python benchmarks/recformer_transfer.py --config configs/recformer_ml-1m-papers.yaml \
        data.path=../shared/data/ml-1m trainer.max_epochs=30

Writes two results:
- `recformer_ml-1m-papers.json` (benchmark train_quality, as benchmarks/train_quality.py writes it): test
  NDCG@10 / HR@10 on ML-1M (papers' preset, leave-one-out, full ranking), the split of SASRec's result.
- `recformer_transfer.json`: the same trained weights pointed at ml-latest-small's 9,724 movies (their texts
  are encoded, nothing is trained), scored on ml-latest-small's leave-one-out test split with full ranking;
  beside it, most-popular counted on ml-latest-small's own training split (a baseline that, unlike the
  transferred model, has seen that data), and the cosine of the frozen text vectors to the history's last
  item (`last_item_text_*`: no training at all, a floor for what the text alone carries across).
  `target_prior_*`: the transferred model given the target catalogue's popularity as its prior (what
  `recsys index set-prior` does: counts of the same training split the baseline counts, weight 1, nothing
  trained); the setting a model trained with `trainer.popularity_correction=true` is made for, since it learnt
  its scores on top of ML-1M's popularity. `last_item_text_prior_*`: the untrained reference with the same
  prior, its cosines at the model's temperature, so the two differ only in what was learnt on ML-1M.

`--model DIR` skips training and transfers an already saved Recformer. The device follows the config's
`trainer.accelerator` (auto: a GPU when there is one), for training and for the transfer alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import recsys  # noqa: F401  (first: OpenMP's passive waiting must be asked for before torch loads, recsys.cpus)
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, provenance, write_result  # noqa: E402
from train_quality import summarize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/recformer_ml-1m-papers.yaml", help="run config (YAML)")
    parser.add_argument("--model", default=None, help="a saved Recformer directory: transfer it, train nothing")
    parser.add_argument("--target", default="ml-latest-small", help="dataset to transfer to (a MovieLens name)")
    parser.add_argument("--target-path", default=None, help="its folder (default: embedded / prepared)")
    parser.add_argument("--name", default="recformer_transfer", help="result file of the transfer")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the result files go")
    parser.add_argument("--trained-by", default=None, metavar="CMD",
                        help="with --model: the command that trained it, recorded in the result")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="PART",
                        help="merge per-seed result files of this benchmark into --name (mean, spread, each run)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    args = parser.parse_args()
    if args.merge:
        write_result(args.name, merge(args.merge), args.results_dir)
        return

    from recsys.run_config import load_run_config
    from recsys.training.train import train

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    cfg = load_run_config(args.config, [*args.overrides, "trainer.progress_bar=false",
                                        f"tracking.output_dir={work / 'runs'}",
                                        f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}"])
    model_dir, source_metrics = Path(args.model) if args.model else None, {}
    if model_dir is None:
        result = train(cfg)
        model_dir, m = Path(result.model_dir), result.metrics
        run = {"seed": cfg.trainer.seed, "ndcg@10": m["test_ndcg@10"], "hr@10": m["test_hr@10"],
               "mrr@10": m["test_mrr@10"], "valid_ndcg@10": m["valid_ndcg@10"], "best_epoch": int(m["best_epoch"]),
               "epochs_run": int(m["epochs_run"]), "epoch_s": m.get("epoch_s"), "val_epoch_s": m.get("val_epoch_s"),
               "wall_s": time.perf_counter() - started}
        quality = summarize(cfg.to_dict(), [run], time.perf_counter() - started)
        quality["published"] = {}
        quality["notes"] = (f"model {cfg.model_name}; compare benchmarks/results/sasrec_ml-1m-papers.json (same split). "
                            f"Trained once by benchmarks/recformer_transfer.py, whose transfer uses these weights.")
        write_result(f"recformer_{cfg.data.name}-{cfg.data.preset}", quality, args.results_dir)
        source_metrics = {f"source_test_{k}": v for k, v in run.items() if k in ("ndcg@10", "hr@10")}
        print(f"trained on {cfg.data.name}: {run}", flush=True)
    if args.model:  # describe the model that is transferred, not the config given on the command line
        from recsys.run_config import run_config_from_dict
        from recsys.saved_model import load_model_files

        saved = load_model_files(model_dir)
        cfg = run_config_from_dict(saved.config, where=str(model_dir))
        source_metrics = {f"source_test_{k}": saved.metrics[f"test_{k}"] for k in ("ndcg@10", "hr@10")
                          if f"test_{k}" in saved.metrics}
    if cfg.trainer.popularity_correction:
        source_metrics.update(source_prior_metrics(model_dir, device(cfg.trainer.accelerator)))
    transfer = transfer_metrics(model_dir, args.target, args.target_path, device(cfg.trainer.accelerator))
    write_result(args.name, {
        "benchmark": "recformer_transfer",
        "epochs_counted_from": 1,  # best_epoch: 1 is the first epoch (results without this field count from 0)
        "dataset": {"source": f"{cfg.data.name} ({cfg.data.preset})", "target": f"{args.target} (raw, leave-one-out test)"},
        "model": f"{cfg.model_name}, trained on {cfg.data.name} only",
        "headline": ["ndcg@10", "hr@10", "popularity_ndcg@10", "popularity_hr@10", "last_item_text_ndcg@10",
                     "target_prior_ndcg@10", "target_prior_hr@10", "last_item_text_prior_ndcg@10",
                     "source_test_ndcg@10", "source_test_prior_ndcg@10", "target_items"],
        "metrics": {**transfer, **source_metrics},
        "model_dir": str(model_dir),
        **({"trained_by": args.trained_by} if args.trained_by else {}),
        "config": cfg.to_dict(),
        "seeds": [cfg.trainer.seed],
        "wall_s": time.perf_counter() - started,
        **provenance(),
    }, args.results_dir)
    print(transfer, flush=True)


def merge(parts: list[Path]) -> dict:
    """One result from per-seed transfer results: each metric's mean, the headline's spread, every run."""
    import json
    import statistics

    runs = [json.loads(path.read_text(encoding="utf-8")) for path in parts]
    first = runs[0]
    seeds = [seed for run in runs for seed in run["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: seeds repeat across the parts: {seeds}")
    metrics: dict[str, float] = {}
    for key in first["metrics"]:
        values = [run["metrics"][key] for run in runs if run["metrics"].get(key) is not None]
        if len(values) == len(runs):
            metrics[key] = statistics.fmean(values)
            if key in first["headline"] and len(values) > 1:
                metrics[f"{key}_std"] = statistics.stdev(values)
    return {
        **{k: first[k] for k in ("benchmark", "dataset", "model", "headline")},
        "metrics": metrics,
        "runs": [{"seed": run["seeds"][0], "metrics": run["metrics"], "command": run["command"],
                  **({"trained_by": run["trained_by"]} if "trained_by" in run else {}),
                  "commit": run["commit"], "wall_s": run["wall_s"]} for run in runs],
        "config": first["config"],
        "seeds": seeds,
        "wall_s": sum(run["wall_s"] for run in runs),
        "notes": f"mean of {len(runs)} runs, one per seed (each run's command in runs[])",
        **provenance(),
    }


def source_prior_metrics(model_dir: Path, on: str) -> dict[str, float]:
    """Test metrics on the training dataset with its own training popularity as the prior: for a model trained
    with popularity_correction, the scores its loss was trained on (its plain scores leave popularity out)."""
    from torch.utils.data import DataLoader

    from recsys.data.batches import EvaluationRows, pass_through
    from recsys.data.prepare import prepare_dataset
    from recsys.data.splits import make_split
    from recsys.evaluation.runner import evaluate_loader
    from recsys.models.prior import WithItemPrior
    from recsys.saved_model import build_saved_model, load_model_files

    saved = load_model_files(model_dir)
    cfg, model = build_saved_model(saved, model_dir, with_prior=False)
    dataset = prepare_dataset(cfg.data)
    split = make_split(dataset, cfg.data)
    counts = training_counts(split, dataset.n_items)
    rows = EvaluationRows(split.test, cfg.model.max_len)
    m = evaluate_loader(WithItemPrior(model, counts).to(on), DataLoader(rows, batch_size=256, collate_fn=pass_through),
                        dataset.n_items)
    return {"source_test_prior_ndcg@10": m["ndcg@10"], "source_test_prior_hr@10": m["hr@10"]}


def training_counts(split: object, n_items: int) -> torch.Tensor:
    """[n_items] interactions of each item in the split's training sequences (what most-popular counts)."""
    from recsys.models.prior import interaction_counts

    return interaction_counts(split.train["items"].to_list(), n_items)  # type: ignore[attr-defined]


def device(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def transfer_metrics(model_dir: Path, target: str, target_path: str | None, on: str) -> dict[str, float]:
    """Test metrics on `target` of the saved text model pointed at `target`'s catalogue, and of popularity."""
    from torch.utils.data import DataLoader

    from recsys.config import DataConfig
    from recsys.data.batches import EvaluationRows, pass_through
    from recsys.data.item_text import catalogue_attributes, text_columns_of
    from recsys.data.prepare import prepare_dataset
    from recsys.data.splits import make_split
    from recsys.evaluation.runner import evaluate_loader
    from recsys.models import Popularity, PopularityConfig
    from recsys.models.prior import WithItemPrior
    from recsys.saved_model import build_saved_model, load_model_files

    data_cfg = DataConfig(name=target, path=target_path)
    dataset = prepare_dataset(data_cfg)
    split = make_split(dataset, data_cfg)
    saved = load_model_files(model_dir)
    cfg, model = build_saved_model(saved, model_dir)
    model = model.to(on)
    t0 = time.perf_counter()
    model.set_item_texts(catalogue_attributes(dataset.items, dataset.text_columns or text_columns_of(dataset.items),
                                              dataset.n_items))
    encode_s = time.perf_counter() - t0

    def test_metrics(scorer: torch.nn.Module, max_len: int, frame: object = split.test) -> dict[str, float]:
        rows = EvaluationRows(frame, max_len)
        return evaluate_loader(scorer, DataLoader(rows, batch_size=256, collate_fn=pass_through), dataset.n_items)

    text = test_metrics(model, cfg.model.max_len)
    popularity = Popularity(dataset.n_items, PopularityConfig())
    popularity.fit_counts(split.train["items"].to_list())
    counted = test_metrics(popularity, 1)
    last_item = test_metrics(LastItemText(model.item_cache), 1)
    counts = training_counts(split, dataset.n_items)
    model_prior = WithItemPrior(model, counts)
    at_temperature = 1.0 / cfg.model.temperature if cfg.model.similarity == "cosine" else 1.0
    reference_prior = WithItemPrior(LastItemText(model.item_cache, at_temperature), counts)
    with_prior = test_metrics(model_prior, cfg.model.max_len)
    last_item_prior = test_metrics(reference_prior, 1)
    # The validation split (each user's second-to-last item) as a second sample: a split of 610 users moves
    # NDCG@10 by about 0.004 from which item happens to be the target alone.
    valid = {f"valid_{name}_ndcg@10": test_metrics(scorer, max_len, split.valid)["ndcg@10"]
             for name, scorer, max_len in (("popularity", popularity, 1),
                                           ("target_prior", model_prior, cfg.model.max_len),
                                           ("last_item_text_prior", reference_prior, 1))}
    return {"ndcg@10": text["ndcg@10"], "hr@10": text["hr@10"], "ndcg@50": text["ndcg@50"], "hr@50": text["hr@50"],
            "popularity_ndcg@10": counted["ndcg@10"], "popularity_hr@10": counted["hr@10"],
            "popularity_ndcg@50": counted["ndcg@50"], "popularity_hr@50": counted["hr@50"],
            "last_item_text_ndcg@10": last_item["ndcg@10"], "last_item_text_hr@10": last_item["hr@10"],
            "target_prior_ndcg@10": with_prior["ndcg@10"], "target_prior_hr@10": with_prior["hr@10"],
            "target_prior_ndcg@50": with_prior["ndcg@50"], "target_prior_hr@50": with_prior["hr@50"],
            "last_item_text_prior_ndcg@10": last_item_prior["ndcg@10"],
            "last_item_text_prior_hr@10": last_item_prior["hr@10"],
            **valid,
            "target_items": float(dataset.n_items), "target_users": float(split.test.height), "encode_target_s": encode_s}


class LastItemText(torch.nn.Module):
    """A reference that trains nothing: the cosine of each item's text vector (the language model's, as the
    transferred model holds it) to that of the history's last item, times `scale`."""

    def __init__(self, text_vectors: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.vectors = torch.nn.Parameter(torch.nn.functional.normalize(text_vectors.float(), dim=-1),
                                          requires_grad=False)
        self.n_items = text_vectors.shape[0] - 1
        self.scale = scale

    def user_vector(self, items: torch.Tensor) -> torch.Tensor:
        return self.vectors[items[:, -1]] * self.scale

    def item_vectors(self) -> torch.Tensor:
        return self.vectors

    def score(self, items: torch.Tensor) -> torch.Tensor:
        return self.user_vector(items) @ self.item_vectors().T


if __name__ == "__main__":
    main()
