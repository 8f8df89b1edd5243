"""Shared pieces of the benchmark scripts: machine facts, the commit, and atomic JSON results."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

# Before anything here imports torch (machine() does): `import recsys` asks OpenMP for passive waiting, which
# it reads once, when torch loads (recsys.cpus). A script that called machine() before training ran with
# spinning threads: SASRec on the Instacart sample took 41-65 s an epoch that way beside other sessions' work,
# 6-8 s with passive waiting at the same time (2 shared cores, 2026-12-04).
import recsys  # noqa: E402,F401

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Cores, CPU model, GPU (if any) and library versions of this machine."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": gpu, "python": platform.python_version(),
            "torch": torch_version, "load_avg_at_start": os.getloadavg()[0]}


def commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def command() -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])


def provenance() -> dict[str, Any]:
    """The machine, command line and commit fields every result file ends with."""
    return {"machine": machine(), "command": command(), "commit": commit()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, result: dict[str, Any], directory: Path = RESULTS) -> Path:
    """<directory>/<name>.json (default benchmarks/results), written durably (`recsys.durable`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    from recsys.durable import write_json  # here, not at the top: importing recsys sets OMP_WAIT_POLICY

    write_json(path, result)
    return path
