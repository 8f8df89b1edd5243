"""Long histories: training time per epoch and peak memory of SASRec and Mamba at max_len 200, 1,000, 2,000.

    benchmarks/with_priority.sh .venv/bin/python benchmarks/long_histories.py --data ../shared/data/ml-1m

ML-1M, papers' preset, leave-one-out, each model as its config gives it (configs/sasrec_ml-1m-papers.yaml,
configs/mamba_ml-1m-papers.yaml) with only `model.max_len` changed. Each (model, max_len) runs in a process of
its own, so that its peak RSS is its own, with an address-space cap (`--memory-gb`): a run that needs more
fails with torch's out-of-memory error and is recorded as such, instead of pushing the shared machine into
swap or the OOM killer.

What is timed: real training steps of the training module (`RecommenderModule.training_step`, backward,
AdamW step) on real batches of the epoch's data loader, `--batches` of them taken in the loader's (shuffled,
length-bucketed) order after one untimed warm-up step, then the widest batch of the epoch (the one that
sets the peak memory). s/epoch = the mean seconds of the sampled batches times the number of batches in an
epoch: an estimate, since the sample's length mix is the epoch's only on average; the result keeps the
sample's mean width next to the epoch's. Validation is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import recsys  # noqa: E402,F401  (first: it sets OpenMP's waiting before torch loads)

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, provenance, write_result  # noqa: E402

ROOT = Path(__file__).parents[1]
CONFIGS = {"sasrec": "configs/sasrec_ml-1m-papers.yaml", "mamba": "configs/mamba_ml-1m-papers.yaml"}


def measure_one(model_name: str, max_len: int, data: Path, n_batches: int, seed: int) -> dict:
    """Train `n_batches` sampled batches plus the widest one of `model_name` at `max_len`; in this process."""
    import torch

    from recsys.data import schema
    from recsys.data.prepare import prepare_dataset
    from recsys.data.splits import make_split
    from recsys.models import build_model
    from recsys.run_config import load_run_config
    from recsys.training.datamodule import SequenceDataModule
    from recsys.training.module import RecommenderModule

    cfg = load_run_config(ROOT / CONFIGS[model_name], [f"data.path={data}", f"model.max_len={max_len}",
                                                       f"trainer.seed={seed}", "tracking.enabled=false"])
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    dataset = prepare_dataset(cfg.data)
    split = make_split(dataset, cfg.data)
    model = build_model(cfg.model_name, cfg.model, dataset.n_items)
    objective = model.objective()
    tc = cfg.trainer
    datamodule = SequenceDataModule(
        split, max_len=max_len, objective=objective.batches, batch_size=tc.batch_size,
        eval_batch_size=tc.eval_batch_size, windows=tc.train_windows, bucket_by_length=tc.bucket_by_length,
        mask_token=objective.mask_token, mask_prob=objective.mask_prob,
        last_item_mask_prob=objective.last_item_mask_prob, num_workers=0, seed=seed,
        with_timestamps=model.uses_timestamps)
    datamodule.setup()
    module = RecommenderModule(model, dataset.n_items, loss=objective.loss, trainer_config=tc)
    module.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no Lightning trainer to log to
    optimiser = torch.optim.AdamW(module.parameters(), lr=tc.lr, betas=tc.betas)
    batches = list(datamodule.train_dataloader())
    widths = [b["input"].shape[1] for b in batches]
    widest = max(range(len(batches)), key=widths.__getitem__)

    def step(batch: dict) -> float:
        started = time.perf_counter()
        loss = module.training_step(batch, 0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return time.perf_counter() - started

    model.train()
    step(batches[0])  # warm-up: first-call allocations and kernel choices
    sample = batches[1:1 + n_batches]
    times = [step(b) for b in sample]
    widest_s = step(batches[widest])
    return {
        "model": model_name, "max_len": max_len, "batch_size": tc.batch_size, "train_windows": tc.train_windows,
        "n_batches_epoch": len(batches), "n_batches_timed": len(times),
        "mean_width_epoch": sum(widths) / len(widths), "mean_width_timed": sum(widths[1:1 + n_batches]) / len(times),
        "s_per_batch": sum(times) / len(times), "epoch_s": sum(times) / len(times) * len(batches),
        "widest_batch": {"width": widths[widest], "s": widest_s}, "peak_rss_mb": peak_rss_mb(),
        "parameters": sum(p.numel() for p in model.parameters()), "status": "ok",
    }


def run_child(model_name: str, max_len: int, args: argparse.Namespace) -> dict:
    """`measure_one` in a fresh process under the address-space cap; a failure is returned as a status."""
    cmd = [sys.executable, __file__, "--child", model_name, str(max_len), "--data", str(args.data),
           "--batches", str(args.batches), "--seed", str(args.seed), "--memory-gb", str(args.memory_gb)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    status = "out of memory" if "memory" in last.lower() or "alloc" in last.lower() else "failed"
    return {"model": model_name, "max_len": max_len, "status": f"{status}: {last[:300]}"}


def flat_metrics(rows: list[dict]) -> dict:
    """The headline figures as one flat name -> number mapping (the README table's form): per model and
    max_len, the epoch estimate, the widest batch's seconds and the peak RSS; None for a run that failed."""
    metrics: dict = {}
    for r in rows:
        ok = r.get("status") == "ok"
        prefix = f"{r['model']}_{r['max_len']}"
        metrics[f"{prefix}_epoch_s"] = round(r["epoch_s"], 1) if ok else None
        metrics[f"{prefix}_widest_batch_s"] = round(r["widest_batch"]["s"], 2) if ok else None
        metrics[f"{prefix}_peak_rss_mb"] = round(r["peak_rss_mb"]) if ok else None
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-1m")
    parser.add_argument("--models", nargs="+", default=["sasrec", "mamba"], choices=sorted(CONFIGS))
    parser.add_argument("--max-lens", nargs="+", type=int, default=[200, 1000, 2000])
    parser.add_argument("--batches", type=int, default=5, help="batches timed per run (after one warm-up)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--memory-gb", type=float, default=10.0, help="address-space cap of each run")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MAX_LEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cap = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(measure_one(args.child[0], int(args.child[1]), args.data, args.batches, args.seed)))
        return
    started = time.perf_counter()
    rows = []
    for model_name in args.models:
        for max_len in args.max_lens:
            row = run_child(model_name, max_len, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_result("long_histories", {
        "benchmark": "long_histories", "dataset": "ml-1m", "preset": "papers", "model": " vs ".join(args.models),
        "metrics": flat_metrics(rows), "runs": rows, "seeds": [args.seed], "wall_s": round(time.perf_counter() - started, 1),
        "memory_cap_gb": args.memory_gb, **provenance()})


if __name__ == "__main__":
    main()
