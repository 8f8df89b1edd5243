"""Speed benchmark: HSTU epoch time, ours against RecTools' HSTUModel, in one run on one machine.

    python benchmarks/hstu_speed.py --peers-venv ~/peers-venv --shared ../shared

Same data (ml-1m, raw preset: 6,040 users, 3,706 items, leave-one-out, real timestamps), same model
(configs/hstu_ml-1m.yaml: 2 blocks, 1 head, hidden 64, max_len 200, dropout 0.2, relative position and time-gap
biases, batch 128, full softmax cross-entropy), one after another so that no two runs share the cores. Ours runs
before and after RecTools and the faster of the two counts (both kept), as in benchmarks/sasrec_speed.py, whose
helpers this uses. RecTools is driven by benchmarks/peers/rectools_hstu.py in the peers' virtual environment.
Result: benchmarks/results/hstu_speed_<cpu>.json. Run it through benchmarks/with_priority.sh on a shared machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sasrec_speed import ROOT, cpu_tag, ours, peer  # also puts recsys and common.py on the path

from common import command, commit, machine, write_result  # noqa: E402  (after sasrec_speed's path set-up)

CONFIG = "hstu_ml-1m.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-venv", type=Path, default=Path.home() / "peers-venv", help="peers' venv")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of our model (mean epoch time reported)")
    parser.add_argument("--peer-epochs", type=int, default=1, help="epochs of RecTools' model")
    args = parser.parse_args()
    started = time.perf_counter()
    shared = args.shared.resolve()
    data = shared / "data" / "ml-1m"
    first = ours(data, args.epochs, [], CONFIG)
    print("ours", first, flush=True)
    rectools = peer(args.peers_venv, shared, ROOT / "benchmarks" / "peers" / "rectools_hstu.py",
                    ["--shared", str(shared), "--data", "ml-1m", "--epochs", str(args.peer_epochs)])
    print("rectools", rectools, flush=True)
    second = ours(data, args.epochs, [], CONFIG)
    print("ours again", second, flush=True)
    best = min(first, second, key=lambda r: r["epoch_s"])
    metrics = {"epoch_s": best["epoch_s"], "val_epoch_s": best["val_epoch_s"],
               "rectools_epoch_s": rectools["s_per_epoch"], "rectools_val_epoch_s": rectools.get("val_s_per_epoch"),
               "speedup_vs_rectools": rectools["s_per_epoch"] / best["epoch_s"],
               "rectools_peak_rss_mb": rectools.get("peak_rss_mb")}
    write_result(f"hstu_speed_{cpu_tag(machine()['cpu'])}", {
        "benchmark": "hstu_speed", "dataset": "ml-1m", "preset": "raw", "model": "hstu", "metrics": metrics,
        "runs": {"ours": [first, second], "rectools": rectools},
        "notes": ("Same data and model size (configs/hstu_ml-1m.yaml), one run after another on the same "
                  "machine; epoch_s = optimisation only, validation separate. Ours: the faster of two runs of "
                  f"{args.epochs} epochs (before and after RecTools); RecTools: {args.peer_epochs} epoch(s). Ours "
                  "trims padding (length-bucketed batches) and computes the loss only at positions with a target."),
        "seeds": [42], "wall_s": time.perf_counter() - started, "machine": machine(), "command": command(),
        "commit": commit(),
    })


if __name__ == "__main__":
    main()
