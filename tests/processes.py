"""Child processes that tests start (`recsys serve`, `recsys train`, `mlflow models serve`, ...), in one place:

- started in their own process group (a session), with stdout and stderr in a log file;
- waited on for an observable event (an HTTP answer, a file appearing, the exit), never for a time;
- stopped for sure, the whole group (a server's workers, DDP's second rank), whatever happened, including a
  start-up that failed or timed out.

A deadline only bounds a hang: it is generous, and its failure says what was waited for and how the child's
output ends, so a slow machine shows up as a slow test, not as a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

START_TIMEOUT_S = 600.0
"""How long a child may take to get ready or to finish. `recsys serve --compile` compiles its encoder at
start-up; on 2 cores with 4-12 CPU-bound processes beside it that took minutes, not the seconds it takes on an
idle machine."""

TEST_TIMEOUT_S = START_TIMEOUT_S + 300
"""pytest-timeout for a test that waits up to START_TIMEOUT_S (pyproject's default is 600 s): longer than the
wait, so that a hang is reported by `wait_until` (what it waited for, the child's output), not by
pytest-timeout's stack dump."""

STOP_GRACE_S = 30.0
"""How long a child has to exit after SIGTERM before its group gets SIGKILL."""

POLL_S = 0.05
"""Between two looks at the awaited event: polling, so the test goes on as soon as the event happened."""

T = TypeVar("T")


def start(args: Sequence[str], log: Path, *, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    """`args` started in a new session (its own process group, so `stop` reaches its children), output in
    `log`. Prefer `running`, which also stops it."""
    with log.open("wb") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(log: Path, chars: int = 3000) -> str:
    text = log.read_text(errors="replace") if log.is_file() else "(no log file)"
    return text[-chars:] if text.strip() else "(nothing)"


def has_exited(process: subprocess.Popen) -> bool:
    """Whether the child ended, without reaping it: a dead leader left unreaped keeps its pid (and so its
    process group id) from being reused, which keeps `stop`'s killpg aimed at our group."""
    if process.returncode is not None:
        return True
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def wait_until(event: Callable[[], T], process: subprocess.Popen, log: Path, what: str,
               timeout: float = START_TIMEOUT_S) -> T:
    """Polls `event()` until it returns something truthy (returned), failing the test if `process` ends
    first or `timeout` seconds pass. `what` names the awaited event in the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        value = event()
        if value:
            return value
        if has_exited(process):
            pytest.fail(f"waited for {what}, but the process ended first (exit code {process.wait()}); "
                        f"its output ends with:\n{log_tail(log)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:.0f} s for {what}, in vain; the process is still running and its "
                        f"output ends with:\n{log_tail(log)}", pytrace=False)
        time.sleep(POLL_S)


def wait_for_exit(process: subprocess.Popen, log: Path, what: str, timeout: float = START_TIMEOUT_S) -> int:
    """The exit code of `process`, failing the test (its output in the message) if it runs past `timeout`."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"waited {timeout:.0f} s for {what} to end, in vain; its output ends with:\n{log_tail(log)}",
                    pytrace=False)


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the child's whole process group, SIGKILL to whatever is left of it after `grace_s` (or at
    once if the leader is gone: the rest of the group is then only leftovers), then reap the leader. Safe to
    call on a child that already ended."""
    deadline = time.monotonic() + grace_s
    if not has_exited(process):
        _signal_group(process, signal.SIGTERM)
        while not has_exited(process) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    _signal_group(process, signal.SIGKILL)  # children that outlived the leader, or a leader that hung on
    process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the group id is the leader's pid (start_new_session)
    except ProcessLookupError:  # nobody left in the group
        pass


@contextmanager
def running(args: Sequence[str], log: Path, *, ready: Callable[[], object] | None = None, what: str = "",
            cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = START_TIMEOUT_S) -> Iterator[subprocess.Popen]:
    """The child `args`, started (and, with `ready`, waited on until `ready()` is truthy: `what` names that
    in a failure), and stopped with `stop` when the block ends, however it ends."""
    process = start(args, log, cwd=cwd, env=env)
    try:
        if ready is not None:
            wait_until(ready, process, log, what or f"{args[0]} to get ready", timeout)
        yield process
    finally:
        stop(process)


def answers(url: str) -> Callable[[], bool]:
    """An event for `wait_until`/`running`: a GET of `url` answers 200."""
    import httpx

    def check() -> bool:
        try:
            return httpx.get(url, timeout=10).status_code == 200
        except httpx.TransportError:  # not listening yet, or too busy to answer within 10 s: ask again
            return False

    return check


@contextmanager
def app_in_thread(app: object, **options: object) -> Iterator[str]:
    """A real uvicorn server for `app` on a free localhost port, in a thread of this process (`options` go to
    uvicorn.Config, e.g. http=...): yields its base URL once it accepts connections, and is shut down on exit
    whatever happened."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S  # only bounds a hang: a loaded machine may take long
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail(f"uvicorn did not start within {START_TIMEOUT_S:.0f} s", pytrace=False)
            time.sleep(0.05)  # polling server.started: goes on as soon as it is set
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
