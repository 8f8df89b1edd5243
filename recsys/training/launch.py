"""Multi-process and multi-node runs: which launcher started this process, whether it is the first one, and
whether the processes started match trainer.num_nodes x trainer.devices.

Lightning finds its cluster environment itself: SLURMEnvironment under `srun`, TorchElasticEnvironment under
`torchrun`, its own LightningEnvironment when it starts the processes of a node itself (trainer.devices > 1
without a launcher, or NODE_RANK/MASTER_ADDR set by hand on each node). recsys never picks one for it. This
module reads the same variables, in the same order of precedence as Lightning
(`lightning.pytorch.trainer.connectors.accelerator_connector._choose_cluster_environment`), for two jobs only:

1. refuse a config that does not match the processes the launcher started, in one line, before any data is
   read (Lightning's own check comes later, as a traceback, or not at all: a node waiting for peers that were
   never started hangs);
2. know, before Lightning's process group exists, whether this process is the first one (global rank 0): the
   only one that claims the run folder, writes into it, logs to MLflow and prints the run's lines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from recsys.config import TrainerConfig
from recsys.errors import ConfigError

TORCHRUN_VARIABLES = frozenset({"RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"})  # TorchElastic's test
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")  # start their own processes


@dataclass(frozen=True)
class Launch:
    """How this process was started: `launcher` is 'srun', 'torchrun', 'lightning' (a process Lightning
    started, or a node started by hand with NODE_RANK) or 'none' (a plain single process)."""

    launcher: str
    world_size: int | None  # processes in the whole run, where the launcher says
    per_node: int | None  # processes per node, where the launcher says
    first: bool  # global rank 0
    world_variable: str = ""  # the variable world_size was read from, for messages


def current_launch(env: Mapping[str, str] | None = None) -> Launch:
    env = os.environ if env is None else env
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return Launch("srun", _number(env.get("SLURM_NTASKS")), _number(env.get("SLURM_NTASKS_PER_NODE")),
                      _number(env.get("SLURM_PROCID")) in (None, 0), "SLURM_NTASKS")
    if TORCHRUN_VARIABLES <= env.keys():
        return Launch("torchrun", _number(env.get("WORLD_SIZE")), _number(env.get("LOCAL_WORLD_SIZE")),
                      _number(env.get("RANK")) == 0, "WORLD_SIZE")
    if "LOCAL_RANK" in env or "NODE_RANK" in env:
        first = _number(env.get("LOCAL_RANK", "0")) == 0 and _number(env.get("NODE_RANK", "0")) == 0
        return Launch("lightning", _number(env.get("WORLD_SIZE")), None, first, "WORLD_SIZE")
    return Launch("none", None, None, True)


def is_first_process() -> bool:
    """Whether this is the process of global rank 0 (also true of a plain single process)."""
    return current_launch().first


def check_launch(trainer: TrainerConfig, launch: Launch | None = None, cuda: bool | None = None) -> None:
    """One ConfigError line when trainer.num_nodes / devices / strategy / accelerator cannot run as started."""
    launch = current_launch() if launch is None else launch
    _check_fsdp_device(trainer, cuda)
    nodes, devices = trainer.num_nodes, trainer.devices
    external = launch.launcher in ("srun", "torchrun")
    if nodes > 1 and launch.launcher == "none":
        raise ConfigError(f"trainer.num_nodes={nodes}: start `recsys train` on every node with torchrun or srun "
                          "(README 'On a cluster'); this process was started by neither (no WORLD_SIZE/RANK, "
                          "no SLURM_NTASKS, no NODE_RANK)")
    if external and trainer.strategy in (*SPAWNING_STRATEGIES, "single_device"):
        raise ConfigError(f"trainer.strategy={trainer.strategy} cannot run under {launch.launcher}, which starts the "
                          "processes itself: use trainer.strategy=ddp (or auto, or fsdp on GPUs)")
    if not external or devices == "auto":
        return
    expected = nodes * devices
    if launch.world_size is not None and launch.world_size != expected:
        raise ConfigError(f"trainer.num_nodes={nodes} x trainer.devices={devices} = {expected} processes, but "
                          f"{launch.launcher} started {launch.world_size} ({launch.world_variable}="
                          f"{launch.world_size}): set trainer.num_nodes to the nodes and trainer.devices to the "
                          "processes per node")
    if launch.per_node is not None and launch.per_node != devices:
        raise ConfigError(f"trainer.devices={devices} per node, but {launch.launcher} started {launch.per_node} "
                          f"processes per node: set trainer.devices={launch.per_node}")


def _check_fsdp_device(trainer: TrainerConfig, cuda: bool | None) -> None:
    """Lightning's FSDPStrategy runs on CUDA devices only (it refuses any other accelerator, 'auto' included)."""
    if not trainer.strategy.startswith("fsdp"):
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if trainer.accelerator not in ("auto", "gpu", "cuda") or not cuda:
        where = f"trainer.accelerator={trainer.accelerator}" if trainer.accelerator not in ("auto", "gpu", "cuda") \
            else "no CUDA device here"
        raise ConfigError(f"trainer.strategy={trainer.strategy} needs CUDA GPUs (Lightning's FSDP has no CPU mode; "
                          f"{where}): on CPUs use trainer.strategy=ddp")


def lightning_accelerator(trainer: TrainerConfig) -> str:
    """The accelerator to hand Lightning: as configured, except that FSDP with 'auto' is 'gpu' (checked above
    to have CUDA), since Lightning's FSDP refuses the string 'auto'."""
    if trainer.strategy.startswith("fsdp") and trainer.accelerator == "auto":
        return "gpu"
    return trainer.accelerator


def _number(value: str | None) -> int | None:
    """An integer variable; None when absent or not a plain integer (SLURM writes '2(x3)' for uneven nodes)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


__all__ = ["Launch", "check_launch", "current_launch", "is_first_process", "lightning_accelerator"]
