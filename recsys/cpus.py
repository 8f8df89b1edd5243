"""How many CPU cores this process may really use, and how its worker threads wait.

`os.cpu_count()` counts the machine's cores, not this process's: a container limited to 1.5 CPUs by its
cgroup quota, or a job pinned to 2 of 64 cores by `taskset`, still sees them all. Running more compute
threads than the cores it may use makes a parallel region wait for a thread that is not running, every
region. So threads are chosen from the CPU affinity and the cgroup quota (v2 `cpu.max`, v1
`cpu.cfs_quota_us`), whichever is smaller.

Waiting: torch's CPU kernels run on OpenMP (GNU libgomp in the torch wheels), whose idle threads spin at
the end of each parallel region before they sleep. On cores that other work shares, a spinning thread
burns the time slice its sibling needed: SASRec on ML-1M with 4 CPU-bound processes beside it took 2.2x as
long per step with spinning threads as with passive ones (one measurement, on 2 AMD EPYC cores). `prefer_passive_waiting` asks for passive
waiting; OpenMP reads the setting once, when torch loads it, so it is called on `import recsys`, which the
command line does before it imports torch. A value the user set is kept.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Cores this process may run on at once: its CPU affinity, capped by its cgroup's CPU quota
    (rounded up: a quota of 1.5 CPUs runs 2 threads). At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota, in CPUs, on this process's cgroup or any cgroup above it; None when unlimited
    or unknown (no cgroup file system, unreadable files)."""
    quotas: list[float] = []
    for directory in _cgroup_dirs(cgroup_root, proc_cgroup):
        quota = _read_quota(directory)
        if quota is not None:
            quotas.append(quota)
    return min(quotas) if quotas else None


def prefer_passive_waiting() -> None:
    """Idle OpenMP threads sleep instead of spinning (see the module docstring), unless the user chose."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cgroup_dirs(cgroup_root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup folders (v2 unified, v1 cpu controller) and every folder above them."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: 0::/path
            base = cgroup_root
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            base = next((cgroup_root / name for name in ("cpu,cpuacct", "cpu", "cpuacct,cpu")
                         if (cgroup_root / name).is_dir()), None)
            if base is None:
                continue
        else:
            continue
        here = base / path.lstrip("/")
        found.extend([here, *[p for p in here.parents if p.is_relative_to(base)]])
    return found


def _read_quota(directory: Path) -> float | None:
    try:
        if (directory / "cpu.max").is_file():  # v2: "max 100000" or "150000 100000"
            quota, period = (directory / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (directory / "cpu.cfs_quota_us").is_file():  # v1: -1 means unlimited
            quota_us = int((directory / "cpu.cfs_quota_us").read_text())
            period_us = int((directory / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None
