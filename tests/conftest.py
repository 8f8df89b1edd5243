"""Shared fixtures. Tests never download anything and never write to ~/.cache: RECSYS_CACHE points at a
temporary folder for the whole session (set at import, before any test or fixture can prepare data)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="recsys-test-cache-"))
os.environ["RECSYS_CACHE"] = str(_SESSION_CACHE)


@pytest.fixture(scope="session", autouse=True)
def _session_cache() -> Iterator[Path]:
    """The session's cache folder, removed at the end."""
    yield _SESSION_CACHE
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


ONE_THREAD_FOLDERS = {"models", "evaluation", "reliability"}
"""Tests of tiny tensors: they run fastest on one thread and do not fight other processes for the 2 cores."""


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_tensors(request: pytest.FixtureRequest) -> Iterator[None]:
    if ONE_THREAD_FOLDERS.isdisjoint(Path(request.node.path).relative_to(Path(__file__).parent).parts):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real MovieLens copies in /work/shared/data (override: $RECSYS_SHARED_DATA); skips when absent."""
    override = os.environ.get("RECSYS_SHARED_DATA")
    folder = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"real MovieLens data not found at {folder} (set RECSYS_SHARED_DATA)")
    return folder
