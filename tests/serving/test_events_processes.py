"""Live histories across real `recsys serve` processes: acknowledged events survive SIGKILL and a restart, and
two servers writing one SQLite history store lose nothing; `recsys recommend --history-store` reads it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from recsys.cli import main
from recsys.history_store import Event, HistoryStore
from recsys.retrieval import Recommender
from tests.processes import START_TIMEOUT_S, TEST_TIMEOUT_S, answers, free_port, has_exited, running, wait_until
from tests.reliability.conftest import cli_command, cli_env
from tests.retrieval.conftest import HISTORIES, ITEM_IDS

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)






def serve_args(model_dir: Path, store: Path, port: int) -> list[str]:
    return cli_command("serve", "--model", str(model_dir), "--port", str(port), "--history-store", str(store),
                       "--history-max-per-user", "100000")


def wait_gone(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the killed `process` has ended (not reaped: `stop` still signals its group safely)."""
    deadline = time.monotonic() + timeout
    while not has_exited(process):
        assert time.monotonic() < deadline, f"the server (pid {process.pid}) outlived SIGKILL by {timeout:.0f} s"
        time.sleep(0.05)  # polling for the exit, which SIGKILL makes imminent


class Writer:
    """A client thread posting events of its own user (timestamps 0, 1, 2, ...: each event's identity) until
    told to stop or the server goes away; `acknowledged` holds the timestamps answered 200."""

    def __init__(self, url: str, user: str, per_post: int) -> None:
        self.url, self.user, self.per_post = url, user, per_post
        self.acknowledged: list[float] = []
        self.failure: str | None = None
        """An answer other than 200 (a thread's assert would be lost): the test checks it."""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            n = 0
            while not self.stop.is_set():
                times = [float(n + i) for i in range(self.per_post)]
                body = {"events": [{"user_id": self.user, "item_id": 100, "timestamp": t} for t in times]}
                try:
                    response = client.post("/events", json=body)
                except httpx.TransportError:  # the server was killed: this post was never acknowledged
                    return
                if response.status_code != 200:
                    self.failure = f"{response.status_code} {response.text[:300]}"
                    return
                self.acknowledged.extend(times)
                n += self.per_post


def stored_times(store: Path, users: list[str]) -> dict[str, list[float]]:
    history = HistoryStore(store, create=False)
    try:
        return {user: h.timestamps for user, h in history.recent(users, limit=10**9).items()}
    finally:
        history.close()


def test_acknowledged_events_survive_sigkill_and_restart(model_dir: Path, tmp_path: Path) -> None:
    store, port = tmp_path / "events.db", free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    users = [f"k{n}" for n in range(4)]
    with running(serve_args(model_dir, store, port), log, env=cli_env(), ready=answers(f"{url}/health"),
                 what="recsys serve to answer /health") as process:
        writers = [Writer(url, user, per_post=5) for user in users]
        for writer in writers:
            writer.thread.start()
        wait_until(lambda: sum(len(w.acknowledged) for w in writers) >= 400 or any(w.failure for w in writers),
                   process, log, "400 events acknowledged")
        assert not [w.failure for w in writers if w.failure]
        os.killpg(process.pid, signal.SIGKILL)  # mid-stream: posts are in flight
        wait_gone(process)
        for writer in writers:
            writer.thread.join(timeout=120)
            assert not writer.thread.is_alive(), "a writer did not notice the server was gone"
    acknowledged = {w.user: w.acknowledged for w in writers}
    found = stored_times(store, users)
    for user in users:
        kept = found.get(user, [])
        assert set(acknowledged[user]) <= set(kept), f"{user}: acknowledged events lost after SIGKILL"
        # whatever else is there was sent (in flight when the kill came: committed, never answered)
        assert kept == [float(n) for n in range(len(kept))]
    before = sum(len(times) for times in found.values())
    print(f"{sum(len(v) for v in acknowledged.values())} acknowledged before SIGKILL, {before} stored")

    with running(serve_args(model_dir, store, port), log, env=cli_env(), ready=answers(f"{url}/health"),
                 what="the restarted recsys serve to answer /health") as process:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/recommend", json={"user_id": "k0", "k": 3}).status_code == 200  # reads them
            for n in range(60):  # nothing in flight at the kill: the count must be exactly the acknowledged
                body = {"user_id": "exact", "item_id": ITEM_IDS[n % 30], "timestamp": float(n)}
                assert client.post("/events", json=body).status_code == 200
        os.killpg(process.pid, signal.SIGKILL)
        wait_gone(process)
    after = HistoryStore(store, create=False)
    assert (after.count(), after.count("exact")) == (before + 60, 60)
    after.close()


def test_two_server_processes_writing_one_store_lose_nothing(model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "events.db"
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    with running(serve_args(model_dir, store, ports[0]), tmp_path / "a.log", env=cli_env(),
                 ready=answers(f"{urls[0]}/health"), what="server A") as a, \
            running(serve_args(model_dir, store, ports[1]), tmp_path / "b.log", env=cli_env(),
                    ready=answers(f"{urls[1]}/health"), what="server B"):
        writers = [Writer(urls[n % 2], f"p{n}", per_post=3) for n in range(6)]
        for writer in writers:
            writer.thread.start()
        wait_until(lambda: min(len(w.acknowledged) for w in writers) >= 60 or any(w.failure for w in writers),
                   a, tmp_path / "a.log", "60 events acknowledged by each of 6 writers across two servers")
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.thread.join(timeout=120)
        assert not [w.failure for w in writers if w.failure]
        found = stored_times(store, [w.user for w in writers])
        assert {w.user: w.acknowledged for w in writers} == found
        # each server reads what the other wrote
        for url in urls:
            for writer in writers[:2]:
                assert httpx.post(f"{url}/recommend", json={"user_id": writer.user, "k": 3}).status_code == 200


def test_cli_recommend_reads_the_store(model_dir: Path, tmp_path: Path, plain: Recommender,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    store = HistoryStore(tmp_path / "events.db")
    store.append([Event("cli-user", str(item), 1.0) for item in (200, 210, 220)])
    store.append([Event("11", "390", 2.0)])
    store.close()
    recommend = ["recommend", "--model", str(model_dir), "-k", "4", "--format", "json", "--history-store",
                 str(tmp_path / "events.db")]
    # as a user runs it (one process, a user only the store knows), then in-process for the rest
    out = subprocess.run(cli_command(*recommend, "--user", "cli-user"), capture_output=True, text=True,
                         timeout=120, env=cli_env())
    assert out.returncode == 0, out.stderr
    assert [row["item_id"] for row in json.loads(out.stdout)["items"]] == [
        r.item_id for r in plain.recommend(history=[200, 210, 220], k=4)]
    assert main([*recommend, "--user", "11"]) == 0
    assert [row["item_id"] for row in json.loads(capsys.readouterr().out)["items"]] == [
        r.item_id for r in plain.recommend(history=HISTORIES[11] + [390], k=4)]
    assert main(["recommend", "--model", str(model_dir), "--user", "1", "--history-store",
                 str(tmp_path / "typo.db")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'typo.db'}: no history store there "
                                              "(recsys serve --history-store creates one)")
    assert not (tmp_path / "typo.db").exists()


def test_processes_share_the_port_and_the_store(model_dir: Path, tmp_path: Path, plain: Recommender) -> None:
    """`recsys serve --processes 2`: both processes take connections on the one port, and an event POSTed to
    one is in the recommendations of either (each reads the store at every request)."""
    store, port = tmp_path / "events.db", free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with running([*serve_args(model_dir, store, port), "--processes", "2"], log, env=cli_env(),
                 ready=answers(f"{url}/health"), what="recsys serve --processes 2 to answer /health") as process:
        events = [{"user_id": "fresh", "item_id": item, "timestamp": float(n)} for n, item in enumerate((200, 210, 220))]
        assert httpx.post(f"{url}/events", json={"events": events}, timeout=60).status_code == 200
        expected = [r.item_id for r in plain.recommend(history=[200, 210, 220], k=4)]
        answered: dict[int, list[object]] = {}

        def both_answered() -> bool:
            with httpx.Client(base_url=url, timeout=60) as client:  # a new connection: either process takes it
                pid = client.get("/health").json()["pid"]
                answered[pid] = [row["item_id"] for row in
                                 client.post("/recommend", json={"user_id": "fresh", "k": 4}).json()["items"]]
            return len(answered) == 2

        wait_until(both_answered, process, log, "both server processes to take a connection")
        assert answered == {pid: expected for pid in answered}
    # uvicorn's access log is off by default (`--access-log` turns it on)
    assert "POST /recommend" not in log.read_text()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_is_a_one_line_error(model_dir: Path, tmp_path: Path, processes: str) -> None:
    """Also with --processes, whose sockets could share a port with another server's (SO_REUSEPORT)."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "first.log"
    with running(cli_command("serve", "--model", str(model_dir), "--port", str(port), "--processes", "2"), log,
                 env=cli_env(), ready=answers(f"{url}/health"), what="the first recsys serve to answer /health"):
        out = subprocess.run(cli_command("serve", "--model", str(model_dir), "--port", str(port), "--processes",
                                         processes), capture_output=True, text=True, timeout=300, env=cli_env())
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_when_one_server_process_dies_the_rest_stop_and_the_exit_says_so(model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "serve.log"
    with running(cli_command("serve", "--model", str(model_dir), "--port", str(port), "--processes", "2"), log,
                 env=cli_env(), ready=answers(f"{url}/health"), what="recsys serve --processes 2 to answer /health") \
            as process:
        child = httpx.get(f"{url}/health", timeout=60).json()["pid"]
        assert child != process.pid  # the children answer; the first process only supervises
        os.kill(child, signal.SIGKILL)
        try:
            code = process.wait(timeout=START_TIMEOUT_S)  # the other child stops, then the supervisor exits
        except subprocess.TimeoutExpired:
            pytest.fail(f"recsys serve outlived one of its two processes by {START_TIMEOUT_S:.0f} s")
    assert code == 2
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: server process recsys-serve-")
    assert errors[0].endswith("ended with exit code -9 (its output is above); the others were stopped")
