"""Large catalogue: peak memory and seconds per training step of SASRec with full CE (chunked), plain CE
(materialised logits) and popularity-sampled CE with logQ correction, up to a million items.

    nice -n 10 .venv/bin/python benchmarks/large_catalogue.py --threads 2

Data: seeded synthetic sequences, every item drawn from a Zipf-like popularity (p(rank r) ~ r^-1.1, the
rank order shuffled over the ids), `--batch` histories of `--len` items plus the target of each position,
so every one of the batch x len positions has a target (25,600 at the defaults 128 x 200). Model: SASRec,
hidden 64, 2 layers, 1 head, max_len = len, AdamW. A step is what `RecommenderModule._next_item_loss` does
for a shift objective followed by backward and the optimiser's step: encode, the loss on the positions
with a target against the tied item table, backward, AdamW. These are a few steps, not epochs: one untimed
warm-up step, then `--steps` timed ones; s/step is their mean (an epoch is s/step x batches per epoch).

Peak memory: on the CPU the process's peak resident set (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, so it
counts the interpreter, torch and the model and optimiser state, not only the loss), each run in a process
of its own under an address-space cap (`--memory-gb`); a run that needs more fails with torch's allocation
error and is recorded as such. On a GPU: `torch.cuda.max_memory_allocated()` over the steps.

Runs: full CE (chunked), plain CE and sampled CE at `--small-items` (ML-20M's 27,278 by default, where plain CE
fits); full CE, sampled CE and plain CE (expected to fail) at `--large-items` (1M). On 2 shared CPU cores a
full-CE step over 25,600 positions and a million items is some 10 TFLOP, about 20 minutes; so at
`--large-items` full CE trains only the last `--large-last` positions of each history (1,024 positions at the
defaults). Its peak memory does not depend on that (a chunk holds `cross_entropy_chunk` rows whatever the
positions; the [positions, 64] states and their gradient are 6.5 MB at 25,600), its time does, linearly:
the result also gives the time scaled to every position, labelled an estimate. `--large-last 0` runs them all.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import recsys  # noqa: E402,F401  (first: it sets OpenMP's waiting before torch loads)

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb, provenance, write_result  # noqa: E402

LOSSES = ("full_ce", "plain_ce", "sampled_ce_logq")


def zipf_batch(n_items: int, batch: int, length: int, seed: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """[batch, length + 1] item ids (1..n_items) drawn from p(rank r) ~ r^-1.1, ranks shuffled over ids;
    and the same popularity as log q [n_items + 1] (entry 0 a placeholder)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    weights = torch.arange(1, n_items + 1, dtype=torch.float64) ** -1.1
    probs = (weights / weights.sum())[torch.randperm(n_items, generator=g)]
    items = torch.multinomial(probs.float(), batch * (length + 1), replacement=True, generator=g) + 1
    log_q = torch.cat([torch.zeros(1, dtype=torch.float64), probs.log()]).float()
    return items.view(batch, length + 1), log_q


def measure_one(loss_name: str, n_items: int, args: argparse.Namespace) -> dict:
    """`args.steps` timed training steps (after one warm-up) with `loss_name` at `n_items`, in this process."""
    import torch

    from recsys.models import SASRec, SASRecConfig
    from recsys.models.losses import LossConfig, PopularitySampler, compute_loss, full_ce, materialised_ce

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = SASRec(n_items, SASRecConfig(max_len=args.len, hidden=64, n_layers=2, n_heads=1, dropout=0.2)).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sequences, log_q = zipf_batch(n_items, args.batch, args.len, args.seed)
    sequences = sequences.to(device)
    inputs, targets = sequences[:, :-1], sequences[:, 1:].clone()
    if args.last and loss_name == "full_ce":
        targets[:, :-args.last] = 0  # only the last `last` positions of each history train (see --large-last)
    sampler = PopularitySampler(log_q.to(device))
    sampled = LossConfig(name="sampled_ce", n_negatives=args.negatives, negatives="popularity")

    def loss_of(hidden: torch.Tensor, wanted: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if loss_name == "full_ce":
            return full_ce(hidden, wanted, table)
        if loss_name == "plain_ce":
            return materialised_ce(hidden, wanted, table)
        return compute_loss(sampled, hidden, wanted, table, sampler=sampler)

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        has_target = targets > 0
        hidden = model.encode(inputs)[has_target]  # [positions, 64]
        loss = loss_of(hidden, targets[has_target], model.item_vectors())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    model.train()
    rss_before_mb = peak_rss_mb()
    warm_up_s = step()  # first-call allocations (AdamW's state) and kernel choices
    times = [step() for _ in range(args.steps)]
    row = {"loss": loss_name, "n_items": n_items, "positions": int((targets > 0).sum()),
           "s_per_step": sum(times) / len(times), "step_s": [round(t, 3) for t in times],
           "warm_up_s": round(warm_up_s, 3), "peak_rss_mb": round(peak_rss_mb()), "rss_before_steps_mb":
           round(rss_before_mb), "status": "ok"}
    if cuda:
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if loss_name == "sampled_ce_logq":
        row["n_negatives"] = args.negatives
    if row["positions"] < args.batch * args.len:
        # The loss's work is linear in the positions with a target and the encoder's is fixed: scaling the
        # whole step by the positions overstates it a little. An estimate, not a measurement.
        row["estimated_s_per_step_all_positions"] = round(row["s_per_step"] * args.batch * args.len
                                                          / row["positions"], 1)
    return row


def run_child(loss_name: str, n_items: int, args: argparse.Namespace) -> dict:
    """`measure_one` in a fresh process under the address-space cap; a failure is returned as a status."""
    cmd = [sys.executable, __file__, "--child", loss_name, str(n_items), "--batch", str(args.batch),
           "--len", str(args.len), "--steps", str(args.steps), "--negatives", str(args.negatives),
           "--threads", str(args.threads), "--seed", str(args.seed), "--memory-gb", str(args.memory_gb),
           "--device", args.device, "--last", str(args.last)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    status = "out of memory" if "memory" in last.lower() or "alloc" in last.lower() else "failed"
    return {"loss": loss_name, "n_items": n_items, "status": f"{status}: {last[:300]}",
            "failed_after_s": round(time.perf_counter() - started, 1)}


def flat_metrics(rows: list[dict]) -> dict:
    """Per (loss, catalogue): s/step and peak memory (None for a run that failed), and the ratios of chunked
    full CE to plain CE where both ran."""
    metrics: dict = {}
    by_key = {(r["loss"], r["n_items"]): r for r in rows}
    for r in rows:
        ok = r.get("status") == "ok"
        prefix = f"{r['loss']}_{r['n_items']}"
        metrics[f"{prefix}_s_per_step"] = round(r["s_per_step"], 3) if ok else None
        metrics[f"{prefix}_peak_rss_mb"] = r["peak_rss_mb"] if ok else None
        if ok and "estimated_s_per_step_all_positions" in r:  # a run on fewer positions: say so beside its time
            metrics[f"{prefix}_positions"] = r["positions"]
            metrics[f"{prefix}_estimated_s_per_step_all_positions"] = r["estimated_s_per_step_all_positions"]
        if "peak_gpu_mb" in r:
            metrics[f"{prefix}_peak_gpu_mb"] = r["peak_gpu_mb"]
    for (loss, n_items), r in by_key.items():
        plain = by_key.get(("plain_ce", n_items))
        if loss != "full_ce" or plain is None or "ok" not in (r["status"], plain["status"]) or plain["status"] != "ok":
            continue
        metrics[f"full_over_plain_time_{n_items}"] = round(r["s_per_step"] / plain["s_per_step"], 3)
        memory = "peak_gpu_mb" if "peak_gpu_mb" in r else "peak_rss_mb"
        metrics[f"full_over_plain_memory_{n_items}"] = round(r[memory] / plain[memory], 3)
    return metrics


def headline(metrics: dict, large_items: int) -> list[str]:
    """The README table's figures: the ratios to plain CE, then each run that finished at the large catalogue."""
    ratios = [k for k in metrics if k.startswith("full_over_plain")]
    return ratios + [k for k, v in metrics.items() if f"_{large_items}_" in k and v is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-items", type=int, default=27_278, help="a catalogue where plain CE fits")
    parser.add_argument("--large-items", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--len", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up)")
    parser.add_argument("--large-steps", type=int, default=1, help="timed steps at --large-items")
    parser.add_argument("--negatives", type=int, default=4096, help="sampled CE's popularity negatives")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-gb", type=float, default=12.0, help="address-space cap of each CPU run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--machine", default="cpu", help="the result file's suffix: large_catalogue_<machine>.json")
    parser.add_argument("--large-last", type=int, default=8,
                        help="full CE at --large-items: targets only at the last N positions of each history "
                             "(0: all); its memory does not grow with positions, its time does, linearly")
    parser.add_argument("--last", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("LOSS", "N_ITEMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.device == "cpu":
            cap = int(args.memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        print(json.dumps(measure_one(args.child[0], int(args.child[1]), args)))
        return
    started = time.perf_counter()
    rows = []
    small_steps = args.steps
    for n_items, steps, last in ((args.small_items, small_steps, 0),
                                 (args.large_items, args.large_steps, args.large_last)):
        args.steps, args.last = steps, last
        for loss_name in LOSSES:
            row = run_child(loss_name, n_items, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.steps = small_steps
    metrics = flat_metrics(rows)
    write_result(f"large_catalogue_{args.machine}", {
        "benchmark": "large_catalogue", "dataset": f"synthetic Zipf(1.1), {args.batch} x {args.len} positions",
        "model": "SASRec hidden 64, 2 layers, 1 head", "metrics": metrics,
        "headline": headline(metrics, args.large_items), "runs": rows,
        "seeds": [args.seed], "wall_s": round(time.perf_counter() - started, 1), "device": args.device,
        "threads": args.threads, "memory_cap_gb": args.memory_gb, "large_last": args.large_last,
        "memory_measure": "peak RSS of the run's process (getrusage ru_maxrss)" if args.device == "cpu"
        else "torch.cuda.max_memory_allocated", **provenance()})


if __name__ == "__main__":
    main()
