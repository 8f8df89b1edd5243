"""Threads from the cores this process may really use (affinity, cgroup quota), and passive OpenMP waiting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cpus import available_cpus, cgroup_cpu_quota


def _cgroup_v2(root: Path, quotas: dict[str, str]) -> Path:
    """A cgroup v2 tree under root with cpu.max files; returns a /proc/self/cgroup naming /a/b."""
    for relative, value in quotas.items():
        folder = root / relative
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpu.max").write_text(value + "\n")
    proc = root / "proc-cgroup"
    proc.write_text("0::/a/b\n")
    return proc


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path: Path) -> None:
    proc = _cgroup_v2(tmp_path, {"a": "150000 100000", "a/b": "max 100000"})
    assert cgroup_cpu_quota(tmp_path, proc) == pytest.approx(1.5)
    # 1.5 CPUs run 2 threads (rounded up), never more than the affinity allows
    assert available_cpus(tmp_path, proc) == min(2, len(os.sched_getaffinity(0)))


def test_cgroup_v2_below_one_cpu_still_runs_one_thread(tmp_path: Path) -> None:
    proc = _cgroup_v2(tmp_path, {"a/b": "20000 100000"})
    assert cgroup_cpu_quota(tmp_path, proc) == pytest.approx(0.2)
    assert available_cpus(tmp_path, proc) == 1


def test_cgroup_v1_quota_and_unlimited(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct" / "job"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("100000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/job\n")
    assert cgroup_cpu_quota(tmp_path, proc) == pytest.approx(1.0)
    assert available_cpus(tmp_path, proc) == 1
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path, proc) is None


def test_no_cgroup_files_means_the_affinity_alone(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None
    assert available_cpus(tmp_path, tmp_path / "missing") == len(os.sched_getaffinity(0))


def test_a_process_pinned_to_one_core_trains_with_one_thread() -> None:
    # taskset-like pinning, in a child so this process keeps its cores: the chosen thread count follows it
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from recsys.cpus import available_cpus; print(available_cpus())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_asks_openmp_for_passive_waiting_unless_the_user_chose(preset: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = "import recsys, os, sys; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         env=env)
    # set before torch is loaded: libgomp reads it once, at load
    assert out.stdout.split() == [expected, "False"]
