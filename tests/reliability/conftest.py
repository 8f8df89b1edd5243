"""Shared helpers of the reliability tests: tiny training configs on one thread (a benchmark may share the
machine), the environment for `python -m recsys.cli` subprocesses, and a pickle that shows whether it ran."""

from __future__ import annotations

import os
import sys
from pathlib import Path


from recsys.run_config import RunConfig, load_run_config
from tests.training.test_train import QUICK

CONFIGS = Path(__file__).parents[2] / "configs"
SASREC = Path(__file__).parents[1] / "configs" / "sasrec_small.yaml"  # the tests' own, see its header
ONE_THREAD = [*QUICK, "trainer.threads=1"]  # later overrides win: QUICK's threads=2 becomes 1


def quick_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """QUICK on one thread, with runs and the MLflow store (sqlite) inside `tmp_path`."""
    return [*ONE_THREAD, f"tracking.output_dir={tmp_path / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def quick(tmp_path: Path, *extra: str, config: Path = SASREC) -> RunConfig:
    return load_run_config(config, quick_overrides(tmp_path, *extra))


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", *args]


def cli_env() -> dict[str, str]:
    """The test session's environment (its RECSYS_CACHE included) on one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Payload:
    """Unpickling this creates `marker` (through builtins.open): a stand-in for any code a pickle may run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")
