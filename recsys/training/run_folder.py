"""Run folders: each run writes into a fresh folder under `tracking.output_dir`, so runs never clobber each other.

A run folder holds `run.json` (when it started, its MLflow run, why it failed, where its cool-down began),
`config.yaml` (the whole config it was started with), `checkpoints/`, `plots/` and `model/`. This module
claims new folders, writes their config and reads and updates `run.json`; `resume.py` finds the run that
`--resume` continues.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from recsys.durable import write_json, write_text
from recsys.errors import ConfigError
from recsys.run_config import RunConfig

RUN_INFO = "run.json"
RUN_DIR_ENV = "RECSYS_RUN_DIR"  # hands the run folder to the worker processes of a multi-process run


def claim_run_dir(cfg: RunConfig) -> Path:
    """A new, empty run folder. mkdir without exist_ok is atomic, so two runs started in the same second
    in the same folder still get different folders.

    Only the first process (global rank 0) of a multi-process run claims one. The others write nothing: the
    processes Lightning started itself get their launcher's folder; those torchrun or srun started (on other
    nodes too) get `tracking.output_dir` as a stand-in, never written to (checkpoints are saved by rank 0,
    whose folder Lightning's ModelCheckpoint broadcasts, and the cool-down broadcasts it too)."""
    from recsys.training.launch import is_first_process

    if not is_first_process():
        return Path(os.environ.get(RUN_DIR_ENV) or cfg.tracking.output_dir)
    root = Path(cfg.tracking.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg.model_name}-{cfg.data.name}-{cfg.data.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1000):
        candidate = root / (stem if attempt == 0 else f"{stem}-{attempt + 1}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        os.environ[RUN_DIR_ENV] = str(candidate)
        write_json(candidate / RUN_INFO, {"started": time.time()})
        return candidate
    raise ConfigError(f"{root}: could not claim a new run folder for {stem}")


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    import yaml

    write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_INFO
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a recsys run folder (no {RUN_INFO})")
    return json.loads(path.read_text(encoding="utf-8"))


def write_run_info(run_dir: Path, values: dict[str, Any]) -> None:
    """Add `values` to run.json (keys already there keep theirs unless `values` names them)."""
    path = run_dir / RUN_INFO
    current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, {**current, **values})


def replace_run_info(run_dir: Path, values: dict[str, Any]) -> None:
    """Write run.json as `values` alone (keys not in `values` are dropped)."""
    write_json(run_dir / RUN_INFO, values)
