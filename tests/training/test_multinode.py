"""Multi-node training on Lightning's own cluster support: 2 "nodes" x 1 process, each started by its own
torchrun over loopback (gloo), against one process with the same global batch.

The two nodes share the global batches (datamodule.GlobalBatchShard), weigh their losses so that DDP's
average is the global batch's gradient (module._shares_of_global_batch) and split the validation users,
adding up sums and counts (RankingAccumulator.all_reduce). Dropout is 0 and the loss is full softmax, so no
random draw differs between the processes: the runs must agree on every metric. The tolerance, 1e-6, is the
target's: absolute for the metrics (means of float64 sums, in [0, 1]), relative for the training loss (~8.3 in
float32, whose spacing there is 9.5e-7, and the two nodes add their halves' sums in another order). The 610
users' windows make 7 global batches of 87 and a last one of 1, so the second node also steps once with an
empty slice (module._zero_loss).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from recsys.run_config import load_run_config
from recsys.training.datamodule import EpochShuffle, GlobalBatchShard
from recsys.training.train import train
from tests.processes import free_port

CONFIG = Path(__file__).parents[1] / "configs" / "sasrec_small.yaml"
TOLERANCE = 1e-6
DEADLINE_S = 300  # generous: two cores shared with other work, three trainings at once
TINY = ["data.max_history=30", "model.max_len=30", "model.hidden=32", "model.dropout=0", "trainer.max_epochs=2",
        "trainer.batch_size=87", "trainer.accelerator=cpu", "trainer.threads=1", "trainer.progress_bar=false"]


def test_ranks_share_each_global_batch_exactly() -> None:
    lengths = torch.randint(1, 30, (203,), generator=torch.Generator().manual_seed(0))
    order = EpochShuffle(203, seed=5, lengths=lengths, batch_size=16)
    order.set_epoch(3)
    alone = list(GlobalBatchShard(order, 16))
    shards = [list(GlobalBatchShard(order, 16, rank, 3)) for rank in range(3)]
    assert all(len(shard) == len(alone) == 13 for shard in shards)  # every process steps once per global batch
    for step, batch in enumerate(alone):
        parts = [shard[step] for shard in shards]
        assert sum(parts, []) == batch  # the same windows, each on exactly one process
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [len(p) for p in (shards[0][-1], shards[1][-1], shards[2][-1])] == [4, 4, 3]  # 203 = 12 * 16 + 11



def start(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment holds this test's marker: torchrun's workers run in sessions of their own."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if f"RECSYS_TEST_MARKER={marker}".encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stop_all(processes: list[subprocess.Popen], marker: str) -> None:
    """Teardown whatever happened: torchrun first (it stops its workers), then anything left with the marker."""
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    for pid in marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(processes: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    for name, proc in processes.items():
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} not finished within {DEADLINE_S} s:\n{logs[name].read_text()[-3000:]}")
        assert code == 0, f"{name} exited {code}:\n{logs[name].read_text()[-3000:]}"


def saved_metrics(output_dir: Path) -> dict[str, float]:
    run_dirs = list(output_dir.iterdir())
    assert len(run_dirs) == 1, run_dirs  # one run folder, the first process's
    return json.loads((run_dirs[0] / "model" / "metrics.json").read_text())


def test_two_nodes_over_loopback_equal_one_process(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RECSYS_TEST_MARKER": marker, "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1"}
    for name in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in ("RANK", "WORLD_SIZE")]:
        del env[name]  # a test run inside a SLURM job must not look like srun to the nodes
    one, two, port = tmp_path / "one", tmp_path / "two", free_port()
    nodes = {f"node {rank}": [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                              "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                              "-m", "recsys.cli", "train", "--config", str(CONFIG), *TINY, "trainer.num_nodes=2",
                              f"tracking.output_dir={two / 'runs'}",
                              f"tracking.tracking_uri=sqlite:///{two / 'mlflow.db'}"]
             for rank in (0, 1)}
    logs = {name: tmp_path / f"{name.replace(' ', '-')}.log" for name in nodes}
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, command in nodes.items():
            folder = two / name.replace(" ", "")
            folder.mkdir(parents=True)  # each node works in its own folder, as on its own machine
            processes[name] = start(command, folder, env, logs[name])
        # meanwhile the same run in one process (this one), with the same global batch of 64
        alone = train(load_run_config(CONFIG, [*TINY, f"tracking.output_dir={one / 'runs'}", "tracking.enabled=false"]))
        wait_for(processes, logs)
    finally:
        stop_all(list(processes.values()), marker)

    got = saved_metrics(two / "runs")
    compared = [k for k in alone.metrics if k.startswith(("test_", "valid_"))]
    assert len(compared) > 40 and alone.metrics["test_n_users"] == got["test_n_users"] == 610
    for key in compared:
        assert abs(got[key] - alone.metrics[key]) <= TOLERANCE, (key, got[key], alone.metrics[key])
    print("largest difference of a final metric:", max(abs(got[k] - alone.metrics[k]) for k in compared))

    node0, node1 = logs["node 0"].read_text(), logs["node 1"].read_text()
    for epoch in (1, 2):  # each epoch's line once, from the first process, whichever node prints
        assert (node0 + node1).count(f"epoch {epoch}/2  loss") == 1 and f"epoch {epoch}/2  loss" in node0
    assert node0.count("saved model:") == 1
    for line in ("preparing data", "building the model", "epoch ", "run folder", "test metrics", "saved model"):
        assert line not in node1, node1[-2000:]  # the second node prints none of the run's lines
    assert not (two / "node1" / "runs").exists()  # and writes no run folder

    # One MLflow run, each epoch logged once; its per-epoch validation metrics (gathered over both nodes) and
    # training loss (weighted over both nodes' targets) are the one process's.
    client = MlflowClient(tracking_uri=f"sqlite:///{two / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("recsys-ml-latest-small").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["trainer.num_nodes"] == "2"
    for key in ("val_ndcg@10", "val_hr@10", "val_coverage@10", "train_loss"):
        logged = client.get_metric_history(runs[0].info.run_id, key.replace("@", "_at_"))
        assert [m.step for m in logged] == [1, 2], key
        for metric, row in zip(logged, alone.history, strict=True):
            assert abs(metric.value - row[key]) <= TOLERANCE * max(1.0, abs(row[key])), (key, metric, row[key])
            print(f"{key} epoch {metric.step}: {row[key]!r} one process, {metric.value!r} two nodes")
