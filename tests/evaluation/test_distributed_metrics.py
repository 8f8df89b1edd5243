"""RankingAccumulator.all_reduce: users split over 2 real gloo processes give one process's metrics.

RecBole's multi-GPU metrics were wrong (its PR #1872): a distributed sampler padded the users with repeats,
and means were averaged over processes. Here each user is scored by exactly one process and sums and counts
are added up, so the two-process result equals the one-process result up to the order of float64 sums.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.evaluation.metrics import RankingAccumulator
from tests.processes import free_port

N_ITEMS, N_USERS, KS = 50, 37, (1, 5, 10, 20)
TOLERANCE = 1e-12  # float64 sums in another order; the target of the multi-node run is 1e-6


def scored_users() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    scores = torch.randn(N_USERS, N_ITEMS + 1, generator=generator)
    targets = torch.randint(1, N_ITEMS + 1, (N_USERS,), generator=generator)
    seen = torch.randint(0, N_ITEMS + 1, (N_USERS, 6), generator=generator)
    seen[::3, 0] = targets[::3]  # every third target repeats an item of its history
    return scores, targets, seen


def metrics_of(users: range) -> RankingAccumulator:
    scores, targets, seen = scored_users()
    accumulator = RankingAccumulator(N_ITEMS, KS)
    for start in range(users.start, users.stop, 5):  # batches of 5, as a loader would give them
        part = slice(start, min(start + 5, users.stop))
        repeats = (seen[part] == targets[part].unsqueeze(1)).any(dim=1)
        accumulator.update(scores[part].clone(), targets[part], seen[part], repeats=repeats)
    return accumulator


def worker(rank: int, port: int, cases: list[list[range]], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for case, shares in enumerate(cases):
            accumulator = metrics_of(shares[rank])
            accumulator.all_reduce()
            torch.save(accumulator.compute(), Path(out) / f"case{case}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()



def test_two_processes_give_one_process_metrics(tmp_path: Path) -> None:
    expected = metrics_of(range(N_USERS)).compute()
    # uneven shares, and one process that scored nobody at all (more processes than users of a split)
    cases = [[range(0, 12), range(12, N_USERS)], [range(0, 0), range(0, N_USERS)]]
    mp.spawn(worker, args=(free_port(), cases, str(tmp_path)), nprocs=2, join=True)
    for case in range(len(cases)):
        for rank in range(2):
            got = torch.load(tmp_path / f"case{case}-rank{rank}.pt")
            assert got.keys() == expected.keys()
            assert got["n_users"] == N_USERS and got["n_repeat_users"] == expected["n_repeat_users"]
            for key, value in expected.items():
                assert abs(got[key] - value) <= TOLERANCE, (case, rank, key, got[key], value)
