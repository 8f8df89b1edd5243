"""The lock that makes runs starting at once on one SQLite store take turns (`tracking._store_lock`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from recsys.training.tracking import _store_lock

# Another process asks for the same lock without waiting: exit 0 when it got it, 1 when it is held.
TRY_LOCK = """
import sys
from filelock import FileLock, Timeout
try:
    FileLock(sys.argv[1]).acquire(timeout=0)
except Timeout:
    sys.exit(1)
"""


def other_process_gets(lock: Path) -> bool:
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock)], timeout=60).returncode == 0


def test_another_process_waits_while_the_store_is_locked(tmp_path: Path) -> None:
    lock = tmp_path / "mlflow.db.lock"
    with _store_lock(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        assert lock.is_file()
        assert not other_process_gets(lock)
    assert other_process_gets(lock)  # released at the end of the block


def test_no_lock_and_no_folder_where_the_store_folder_is_missing(tmp_path: Path) -> None:
    with _store_lock(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"):
        pass  # the store's own error says the folder is missing, not a lock created in a new folder
    assert not (tmp_path / "missing").exists()


def test_other_stores_are_not_locked(tmp_path: Path) -> None:
    with _store_lock("http://127.0.0.1:9"):
        pass
    assert list(tmp_path.iterdir()) == []
