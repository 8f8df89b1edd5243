"""trainer.num_nodes / devices / strategy against the processes the launcher started: one line when they differ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.config import TrainerConfig
from recsys.errors import ConfigError
from recsys.training.launch import Launch, check_launch, current_launch

CONFIG = Path(__file__).parents[1] / "configs" / "sasrec_small.yaml"


def torchrun_env(world: int, per_node: int, rank: int) -> dict[str, str]:
    return {"RANK": str(rank), "GROUP_RANK": str(rank // per_node), "LOCAL_RANK": str(rank % per_node),
            "LOCAL_WORLD_SIZE": str(per_node), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1"}


def test_launchers_are_told_apart_as_lightning_does() -> None:
    assert current_launch({}) == Launch("none", None, None, True)
    node1 = current_launch(torchrun_env(2, 1, 1))
    assert (node1.launcher, node1.world_size, node1.per_node, node1.first) == ("torchrun", 2, 1, False)
    assert current_launch(torchrun_env(2, 1, 0)).first
    slurm = current_launch({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3",
                            "SLURM_JOB_NAME": "train", **torchrun_env(4, 2, 0)})
    assert (slurm.launcher, slurm.world_size, slurm.per_node, slurm.first) == ("srun", 4, 2, False)  # SLURM first
    # an interactive allocation (salloc's shell) is not srun, as Lightning's SLURMEnvironment also says
    assert current_launch({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}).launcher == "none"
    # a process Lightning started itself on one node (trainer.devices=2): LOCAL_RANK/NODE_RANK/WORLD_SIZE only
    child = current_launch({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"})
    assert (child.launcher, child.first) == ("lightning", False)
    assert current_launch({"NODE_RANK": "1"}).first is False  # node 1 started by hand


@pytest.mark.parametrize(("trainer", "env", "message"), [
    ({"num_nodes": 2}, {}, "trainer.num_nodes=2: start `recsys train` on every node with torchrun or srun"),
    ({"num_nodes": 2}, torchrun_env(3, 1, 0), "trainer.num_nodes=2 x trainer.devices=1 = 2 processes, but "
                                              "torchrun started 3 (WORLD_SIZE=3)"),
    ({"num_nodes": 2}, torchrun_env(2, 2, 0), "trainer.devices=1 per node, but torchrun started 2 processes per "
                                              "node: set trainer.devices=2"),
    ({"num_nodes": 2, "devices": 2}, {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "train"},
     "trainer.num_nodes=2 x trainer.devices=2 = 4 processes, but srun started 2 (SLURM_NTASKS=2)"),
    ({"num_nodes": 2, "strategy": "ddp_spawn"}, torchrun_env(2, 1, 0),
     "trainer.strategy=ddp_spawn cannot run under torchrun"),
    ({"strategy": "fsdp", "accelerator": "cpu"}, {},
     "trainer.strategy=fsdp needs CUDA GPUs (Lightning's FSDP has no CPU mode; trainer.accelerator=cpu): on CPUs use "
     "trainer.strategy=ddp"),
])
def test_a_launch_that_cannot_work_is_one_config_error(trainer: dict, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_launch(TrainerConfig(**trainer), current_launch(env), cuda=False)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_fsdp_without_cuda_is_refused_even_with_accelerator_auto() -> None:
    with pytest.raises(ConfigError, match="no CUDA device here"):
        check_launch(TrainerConfig(strategy="fsdp"), current_launch({}), cuda=False)
    check_launch(TrainerConfig(strategy="fsdp"), current_launch({}), cuda=True)  # a GPU machine: accepted


def test_num_nodes_is_at_least_one() -> None:
    with pytest.raises(ConfigError, match="num_nodes: must be at least 1, got 0"):
        TrainerConfig(num_nodes=0)


def test_matching_launches_pass() -> None:
    check_launch(TrainerConfig(num_nodes=2), current_launch(torchrun_env(2, 1, 1)), cuda=False)
    check_launch(TrainerConfig(num_nodes=2, devices=4), current_launch(
        {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "t"}), cuda=False)
    check_launch(TrainerConfig(devices=2, strategy="ddp"), current_launch({}), cuda=False)  # Lightning starts them
    check_launch(TrainerConfig(num_nodes=2, devices="auto"), current_launch(torchrun_env(4, 2, 0)), cuda=False)


@pytest.mark.parametrize(("overrides", "env", "message"), [
    (["trainer.num_nodes=2"], {}, "error: trainer.num_nodes=2: start `recsys train` on every node"),
    (["trainer.strategy=fsdp", "trainer.accelerator=cpu"], {}, "trainer.strategy=fsdp needs CUDA GPUs"),
])
def test_cli_says_it_in_one_line_and_starts_nothing(overrides: list[str], env: dict, message: str,
                                                     tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "train", "--config", str(CONFIG), *overrides],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
