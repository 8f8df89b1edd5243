"""A disk that fails while a model or a checkpoint is written (ENOSPC, simulated at the write, the fsync or
the rename), and a writer killed mid-save: what was saved before stays whole, nothing half-written loads."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from mlflow.tracking import MlflowClient

from recsys.errors import ModelLoadError
from recsys.retrieval import Recommender
from recsys.saved_model import MANIFEST, load_model_files, save_model
from recsys.training.checkpoints import load_checkpoint_file
from recsys.training.resume import resume_config
from recsys.training.train import train
from tests.processes import running, wait_for_exit, wait_until
from tests.reliability.conftest import cli_env, quick
from tests.retrieval.conftest import tiny_saved_model

TWO_EPOCHS = ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.patience=0"]


def disk_full(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def half_written_weights(state: dict, filename: str, *args: object, **kwargs: object) -> None:
    """The real safetensors bytes, cut off halfway by a full disk."""
    data = safetensors.torch.save(state)
    with open(filename, "wb") as handle:
        handle.write(data[: len(data) // 2])
    disk_full()


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def quality(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.endswith("_s")}


@pytest.mark.parametrize("target, replacement", [
    ("safetensors.torch.save_file", disk_full),
    ("safetensors.torch.save_file", half_written_weights),
    ("polars.DataFrame.write_parquet", disk_full),
    ("os.fsync", disk_full),
    ("os.rename", disk_full),
])
def test_a_failed_save_leaves_nothing_and_keeps_the_previous_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   target: str, replacement: object) -> None:
    saved = tiny_saved_model()
    previous = save_model(saved, tmp_path / "model")
    before = snapshot(previous)
    monkeypatch.setattr(target, replacement)
    with pytest.raises(OSError) as failure:
        save_model(saved, tmp_path / "model-2")
    assert failure.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no model-2, no temporary folder
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_model_files(tmp_path / "model-2")
    assert snapshot(previous) == before
    assert Recommender.load(previous, save_index=False).recommend(history=[100, 110], k=3)


def test_a_writer_killed_mid_save_leaves_a_folder_that_never_loads_and_is_cleaned(tmp_path: Path) -> None:
    # A real process, killed with SIGKILL after every file (manifest included) is in its temporary folder and
    # before the rename that would publish it: the worst moment. The stubbed rename creates a marker (argv[2]),
    # then holds still: the kill waits for the marker, so every write and fsync before the rename is done,
    # however slow the machine (a sleep after the manifest appeared could kill it mid-fsync).
    script = (
        "import os, sys, threading\n"
        "from pathlib import Path\n"
        "from recsys.saved_model import save_model\n"
        "from tests.retrieval.conftest import tiny_saved_model\n"
        "os.rename = lambda *a: (Path(sys.argv[2]).touch(), threading.Event().wait(600))\n"
        "save_model(tiny_saved_model(), sys.argv[1])\n"
    )
    at_rename, log = tmp_path / "at-rename", tmp_path / "writer.log"
    with running([sys.executable, "-c", script, str(tmp_path / "model"), str(at_rename)], log, env=cli_env(),
                 cwd=Path(__file__).parents[2]) as process:
        wait_until(at_rename.exists, process, log, "the writer to reach the rename that publishes the model")
        os.kill(process.pid, signal.SIGKILL)
        assert wait_for_exit(process, log, "the killed writer") == -signal.SIGKILL
    (leftover,) = tmp_path.glob(".model.*.tmp")
    assert (leftover / MANIFEST).is_file()  # complete in content, yet:
    with pytest.raises(ModelLoadError, match="an unfinished save .* not a model directory"):
        Recommender.load(leftover)
    assert not (tmp_path / "model").exists()

    ours = tmp_path / f".model.{os.getpid()}.inprogress.tmp"  # a save still running in a live process
    ours.mkdir()
    save_model(tiny_saved_model(), tmp_path / "model")  # the next save removes the dead writer's folder
    assert not leftover.exists() and ours.exists()
    assert load_model_files(tmp_path / "model").n_items == 30


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run the recovered ones must equal."""
    return train(quick(tmp_path_factory.mktemp("straight"), *TWO_EPOCHS, "tracking.enabled=false"))


def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             straight) -> None:
    real_save = torch.save
    written: list[Path] = []

    def save(obj: object, handle, *args: object, **kwargs: object) -> None:
        written.append(Path(handle.name))
        if isinstance(obj, dict) and obj.get("epoch", 0) >= 1:  # epoch 1's checkpoints hit a full disk
            handle.write(b"PK\x03\x04 half a checkpoint")
            disk_full()
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left on device"):
        train(quick(tmp_path, *TWO_EPOCHS))
    monkeypatch.undo()
    (run_dir,) = (p.parent for p in (tmp_path / "runs").glob("*/run.json"))
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file
    assert load_checkpoint_file(checkpoints / "last.ckpt")["epoch"] == 0  # epoch 0's, whole
    assert not (run_dir / "model").exists()
    # Written beside the target and renamed over it (not copied in from the system's temp folder).
    assert {p.parent for p in written} == {checkpoints} and all(p.name.startswith(".") for p in written)

    resumed = train(resume_config(run_dir, []), resume=run_dir)  # space freed: go on
    assert quality(resumed.metrics) == quality(straight.metrics)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(resumed.run_id, "train_loss")] == [1, 2]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_a_full_disk_when_saving_the_model_keeps_the_run_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   straight) -> None:
    monkeypatch.setattr("safetensors.torch.save_file", half_written_weights)
    with pytest.raises(OSError, match="No space left on device"):
        train(quick(tmp_path, *TWO_EPOCHS))
    monkeypatch.undo()
    (run_dir,) = (p.parent for p in (tmp_path / "runs").glob("*/run.json"))
    assert not list(run_dir.glob("model*")) and not list(run_dir.glob(".model*"))
    assert load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 1

    resumed = train(resume_config(run_dir, []), resume=run_dir)  # nothing left to fit: evaluate and save
    assert resumed.model_dir == run_dir / "model"
    assert quality(load_model_files(resumed.model_dir).metrics) == quality(straight.metrics)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(resumed.run_id, "train_loss")] == [1, 2]
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == resumed.run_id
