"""Live histories: what users did after the model was trained, kept in a SQLite file that survives crashes.

    store = HistoryStore("events.db")                       # created if missing (create=False: must exist)
    store.append([Event("u1", "260", 1700000000.0)])        # durable when it returns
    store.recent(["u1"], limit=200)                         # {"u1": StoredHistory(items=["260"], timestamps=[...])}

`Recommender.use_history_store(store)` (or `Recommender.load(..., history_store=PATH)`) reads it: a user's
history is then the model's saved history (if the model knows the user) followed by their stored events, so
users the model never saw become known through their events. `recsys serve --history-store PATH` writes it
from `POST /events`, through a `GroupCommit` so that concurrent requests share one transaction.

Why SQLite in WAL mode: one file, no server to run, in the standard library; readers (the recommendation
workers) never block the writer nor it them; several processes may write the same file (SQLite's file lock,
waited on for up to `busy_timeout_s`). `synchronous=FULL` fsyncs the write-ahead log at every commit, so an
acknowledged event survives a power loss as well as `kill -9` of the server (NORMAL would survive kill -9
only); group commit pays that fsync once per batch of concurrent requests instead of once per event.

Schema (user_version 1): one table `events(seq, user_id, item_id, timestamp)`, `seq` the insertion order
(AUTOINCREMENT: never reused, so it stays the order of arrival after evictions), an index on (user_id, seq),
and a row count kept by triggers in `meta`. Ids are stored as text: user 42 and user "42" are one user (as
`Recommender` matches them), item ids are the model's original ids written as text.

Retention (`HistoryStoreConfig`): each commit keeps only the newest `max_per_user` events of each user it
wrote to, and, when the whole table holds more than `max_events` rows, deletes the oldest rows (by seq, of
whichever users) until it holds `max_events`. Deleted pages are reused by later inserts, so the file stops
growing once the bound is reached (`journal_size_limit` keeps the WAL file small after checkpoints too).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import queue
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, DataError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('events', 0);
CREATE TRIGGER IF NOT EXISTS events_counted_in AFTER INSERT ON events
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'events'; END;
CREATE TRIGGER IF NOT EXISTS events_counted_out AFTER DELETE ON events
    BEGIN UPDATE meta SET value = value - 1 WHERE key = 'events'; END;
"""
WAL_LIMIT_BYTES = 64 << 20
"""journal_size_limit: after a checkpoint the WAL file is truncated to at most this."""


@dataclasses.dataclass(frozen=True)
class HistoryStoreConfig:
    """Retention of a history store (`recsys serve --history-max-per-user`, `--history-max-events`)."""

    max_per_user: int = 200
    """Newest events kept per user; at least the model's max_len (the largest shipped configs' is 200, and
    500 for the long-history ones) so that the model sees every event it can read."""
    max_events: int = 10_000_000
    """Most events kept in all; beyond it the oldest (in order of arrival, of any user) are deleted. About
    60-80 bytes per event on disk with its index: 10 million is under a GB."""
    busy_timeout_s: float = 30.0
    """How long a write waits for another process's write transaction before failing."""

    def __post_init__(self) -> None:
        if self.max_per_user < 1 or self.max_events < 1:
            raise ConfigError(f"history store: max_per_user and max_events must be at least 1, got "
                              f"{self.max_per_user} and {self.max_events}")
        if not 0 < self.busy_timeout_s <= 3600:
            raise ConfigError(f"history store: busy_timeout_s must be in (0, 3600], got {self.busy_timeout_s}")


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing a user did: an item, at a time (seconds)."""

    user_id: str
    item_id: str
    timestamp: float


@dataclasses.dataclass(frozen=True)
class StoredHistory:
    """A user's stored events, oldest first (in order of arrival)."""

    items: list[str]
    timestamps: list[float]


def user_key(user: Any) -> str:
    """The text a user id is stored under: 42 and "42" are the same user."""
    if isinstance(user, bool) or not isinstance(user, (int, str)) and not hasattr(user, "__index__"):
        raise DataError(f"user_id {user!r}: expected an integer or a string")
    return user if isinstance(user, str) else str(int(user))


class HistoryStore:
    """The events of a SQLite file (see the module docstring). Safe to use from several threads: each thread
    reads and writes through its own connection. `close` when done."""

    def __init__(self, path: str | Path, config: HistoryStoreConfig | None = None, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.config = config or HistoryStoreConfig()
        if not create and not self.path.is_file():
            raise ConfigError(f"{self.path}: no history store there (recsys serve --history-store creates one)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._set_up()

    # -- connections ----------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves
            conn = sqlite3.connect(self.path, timeout=self.config.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")  # per connection: fsync the WAL at every commit
        except sqlite3.Error as exc:
            raise DataError(f"{self.path}: cannot open the history store ({exc})") from None
        return conn

    def _set_up(self) -> None:
        conn = self._connection()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]  # kept in the file once set
            if mode != "wal":
                raise DataError(f"{self.path}: the history store needs WAL mode, SQLite chose {mode!r}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version not in (0, SCHEMA_VERSION) or (version == 0 and tables - {"sqlite_sequence"}):
                raise DataError(f"{self.path}: not a recsys history store (schema version {version}, tables "
                                f"{sorted(tables)}); point --history-store at a new file or at one it made")
            if version == 0:  # one transaction; IF NOT EXISTS: another process may have just created it
                conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a usable history store ({exc})") from None

    def close(self) -> None:
        """Close every thread's connection (the file stays as it is: all committed events are in it)."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- writing ---------------------------------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> int:
        """Append `events` in one transaction, then apply the retention; durable (fsynced) when it returns.
        Returns the number appended. Another process's write is waited for up to busy_timeout_s."""
        if not events:
            return 0
        rows = [(e.user_id, e.item_id, e.timestamp) for e in events]
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read lock
            try:
                conn.executemany("INSERT INTO events (user_id, item_id, timestamp) VALUES (?, ?, ?)", rows)
                self._retain(conn, {e.user_id for e in events})
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # busy past the timeout, disk full, read-only file
            raise DataError(f"{self.path}: could not store {len(rows)} events ({exc})") from None
        return len(rows)

    def _retain(self, conn: sqlite3.Connection, users: Iterable[str]) -> None:
        """Inside the write transaction: the newest max_per_user events of each of `users`, and at most
        max_events in all (the oldest go first)."""
        conn.executemany(
            "DELETE FROM events WHERE user_id = ?1 AND seq <= "
            "(SELECT seq FROM events WHERE user_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            [(user, self.config.max_per_user) for user in users])
        excess = self._count(conn) - self.config.max_events
        if excess > 0:
            conn.execute("DELETE FROM events WHERE seq <= (SELECT seq FROM events ORDER BY seq LIMIT 1 OFFSET ?)",
                         (excess - 1,))

    # -- reading ---------------------------------------------------------------------------------------------

    def recent(self, users: Iterable[str], limit: int | None = None) -> dict[str, StoredHistory]:
        """The newest `limit` (default: max_per_user) stored events of each of `users` that has any, oldest
        first. One read transaction: a consistent view even while other processes write."""
        limit = self.config.max_per_user if limit is None else limit
        conn = self._connection()
        out: dict[str, StoredHistory] = {}
        try:
            conn.execute("BEGIN")
            try:
                for user in dict.fromkeys(users):
                    rows = conn.execute("SELECT item_id, timestamp FROM events WHERE user_id = ? "
                                        "ORDER BY seq DESC LIMIT ?", (user, limit)).fetchall()
                    if rows:
                        rows.reverse()
                        out[user] = StoredHistory([item for item, _ in rows], [float(t) for _, t in rows])
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise DataError(f"{self.path}: could not read the history store ({exc})") from None
        return out

    def count(self, user: str | None = None) -> int:
        """Events stored in all, or of one user."""
        conn = self._connection()
        if user is None:
            return self._count(conn)
        return int(conn.execute("SELECT count(*) FROM events WHERE user_id = ?", (user,)).fetchone()[0])

    @staticmethod
    def _count(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'events'").fetchone()[0])

    def __repr__(self) -> str:
        return f"HistoryStore({self.path}, max_per_user={self.config.max_per_user}, max_events={self.config.max_events})"


def check_timestamp(value: float, name: str, now: float, max_ahead_s: float = 86_400.0) -> float:
    """A finite, non-negative time in seconds, at most `max_ahead_s` after `now` (a clock a day off, or
    milliseconds sent as seconds, would otherwise sort a history wrongly for good); DataError naming `name`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise DataError(f"{name}: timestamp must be a finite number of seconds, got {value!r}")
    if value < 0:
        raise DataError(f"{name}: timestamp {value!r} is negative; give Unix seconds")
    if value > now + max_ahead_s:
        raise DataError(f"{name}: timestamp {value!r} is more than {max_ahead_s:g} s after the server's clock "
                        f"({now:.0f}); give Unix seconds, not milliseconds")
    return float(value)


class GroupCommit:
    """One writer thread that appends whatever was submitted meanwhile to `store` as one transaction: under
    concurrent requests the fsync of a commit is shared by all of them. `start` before use, `stop` after."""

    def __init__(self, store: HistoryStore, max_events: int = 10_000) -> None:
        self.store = store
        self.max_events = max_events
        """Most events in one transaction (a request's events are never split)."""
        self._queue: queue.SimpleQueue[tuple[list[Event], concurrent.futures.Future[int]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0
        """Transactions committed so far; events / commits is the mean group size."""
        self.events = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="recsys-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, events: list[Event]) -> concurrent.futures.Future[int]:
        """A future that is done (with the count) once `events` are committed, or failed with the error."""
        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        if self._thread is None:
            future.set_exception(RuntimeError("GroupCommit is not started"))
            return future
        self._queue.put((events, future))
        return future

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            size = len(first[0])
            while size < self.max_events:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                group.append(item)
                size += len(item[0])
            self._commit(group)

    def _commit(self, group: list[tuple[list[Event], concurrent.futures.Future[int]]]) -> None:
        try:
            self.store.append([event for events, _ in group for event in events])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error and answers it
            for _, future in group:
                _settle(future, None, exc)
            return
        self.commits += 1
        self.events += sum(len(events) for events, _ in group)
        for events, future in group:
            _settle(future, len(events), None)


def _settle(future: concurrent.futures.Future[int], count: int | None, error: Exception | None) -> None:
    """Answer a waiting request; one that was cancelled meanwhile (its client went away: its events may or may
    not be in, it was never acknowledged) is skipped, since setting a cancelled future raises."""
    if future.cancelled():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(count)  # type: ignore[arg-type]
    except concurrent.futures.InvalidStateError:  # cancelled between the check and the call
        pass
