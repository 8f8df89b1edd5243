"""MLflow tracking that never breaks a run.

Hours of training must not be lost because the tracking store is down at the end: every MLflow call goes
through `Tracker`, which warns once and switches itself off when the store fails. Only the process of
global rank 0 creates a Tracker, so a multi-process run is logged once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_LENGTH = 500  # MLflow rejects longer param values


def resolve_tracking_uri(uri: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory
    (MLflow 3 refuses its old ./mlruns file store by default, and `mlflow ui` started in the same folder
    finds mlflow.db on its own)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside its database file (<db folder>/mlartifacts/<experiment>), not
    in MLflow's default ./mlruns of whatever folder the process happens to run in. Other stores: MLflow's
    own default."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlartifacts" / experiment).as_uri()


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` for the block, then put back as it was, with
    $MLFLOW_TRACKING_URI (which `mlflow.set_tracking_uri` writes, and unsets for None). For the MLflow calls
    that read the global store even when given a client: `Model.log`, and the registry's check of a
    `models:/<model_id>` source."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, previous_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def git_commit(package_dir: str | Path | None = None) -> str | None:
    """The commit of the recsys checkout that this code runs from, with '-dirty' when it has uncommitted
    changes; None when the code is not a git checkout's (an installed copy).

    Asked of the package's own folder, never of the working directory: a run started elsewhere would log
    nothing, and one started inside another repository would log that repository's commit. The package file
    must be tracked there, so a copy installed into a virtual environment inside a checkout (ignored by its
    git) does not pass for the checkout's code."""
    folder = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    try:
        _git(folder, "ls-files", "--error-unmatch", "__init__.py")
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5,
                          check=True).stdout.strip()


class Tracker:
    """One MLflow run. Methods are no-ops once tracking failed or was disabled."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str,
                 run_id: str | None = None, enabled: bool = True) -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        self.run_id: str | None = None
        self.enabled = enabled
        self._client: Any = None
        if enabled:
            self._call(lambda: self._start(experiment, run_name, run_id), "start the MLflow run")

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _start(self, experiment: str, run_name: str, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        with _store_lock(self.uri):
            client = MlflowClient(tracking_uri=self.uri)  # creates or migrates a SQLite store's schema
            if run_id is not None:
                client.get_run(run_id)  # fails loudly (and disables tracking) if the run is gone
                client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            else:
                self.run_id = client.create_run(self._experiment_id(client, experiment), run_name=run_name).info.run_id
        self._client = client

    def _experiment_id(self, client: Any, experiment: str) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(experiment, artifact_location=artifact_root(self.uri, experiment)))
        except MlflowException:
            found = client.get_experiment_by_name(experiment)  # another process created it in the meantime
            if found is None:
                raise
            return str(found.experiment_id)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run; tried even after an earlier call failed, so a run is not left RUNNING."""
        if self._client is not None and self.run_id is not None:
            self.enabled = True
            self._call(lambda: self._client.set_terminated(self.run_id, status=status), "close the MLflow run")

    @property
    def active(self) -> bool:
        return self.enabled and self._client is not None and self.run_id is not None

    # -- logging --------------------------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        self._call(lambda: self._client.log_batch(self.run_id, params=items), "log params")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        self._call(lambda: self._client.log_batch(self.run_id, metrics=items), "log metrics")

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call(lambda: self._client.log_batch(self.run_id, tags=items), "set tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._call(lambda: self._client.log_artifacts(self.run_id, str(path), artifact_path), "log artifacts")
        else:
            self._call(lambda: self._client.log_artifact(self.run_id, str(path), artifact_path), "log an artifact")

    def metric_history(self, key: str) -> list[Any]:
        return self._call(lambda: self._client.get_metric_history(self.run_id, _metric_key(key)),
                          "read metric history") or []

    def register_model(self, name: str, source: str, tags: dict[str, str] | None = None,
                       description: str | None = None) -> str | None:
        """Register `source` (a logged model's `models:/<model_id>`, or an artifact folder of this run,
        `runs:/<run_id>/<path>`) as a new version of `name`, linked to this run; returns the version."""

        def register() -> str:
            from mlflow.exceptions import MlflowException

            try:
                self._client.create_registered_model(name)
            except MlflowException:
                pass  # it exists already: add a version
            # models:/<model_id> names a logged model (a registered one is models:/<name>/<version> or @alias)
            ref = source[len("models:/"):] if source.startswith("models:/") else ""
            model_id = ref if ref and "/" not in ref and "@" not in ref else None
            with using_tracking_uri(self.uri):  # the registry looks a models:/ source up in the global store
                version = self._client.create_model_version(name, source, run_id=self.run_id, tags=tags or {},
                                                            description=description, model_id=model_id)
            return str(version.version)

        return self._call(register, f"register the model as {name!r}")

    # -- the one place that decides what a tracking failure does ---------------------------------------------
    def _call(self, fn: Callable[[], T], what: str) -> T | None:
        if not self.enabled or (self._client is None and self.run_id is not None):
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any store failure must not end a training run
            warnings.warn(
                f"MLflow tracking at {self.uri} failed to {what} ({_reason(exc)[:200]}); "
                "training goes on without tracking, the model is still saved.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.enabled = False
            return None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Runs that start at once on one SQLite store take turns (a file lock on `<db>.lock` beside it): MLflow
    creates or migrates the schema and the experiment on first use, and two processes doing that together
    break each other ("table _alembic_tmp_... already exists"), which would leave a run untracked."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    path = Path(f"{uri[len('sqlite:///'):]}.lock")
    lock: FileLock | None = None
    if path.parent.is_dir():  # filelock would create a missing folder, which would hide the store's own error
        try:
            lock = FileLock(path)
            lock.acquire()
        except OSError:
            lock = None  # a read-only folder: no lock, and the store's own error will say why
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _reason(exc: BaseException) -> str:
    """The first line of the store's own complaint. SQLAlchemy wraps the database's error (`.orig`, e.g.
    sqlite's "attempt to write a readonly database" once the file is gone) in text whose first line may be
    only a note about autoflush."""
    cause: BaseException = exc
    link: BaseException | None = exc
    while link is not None:  # MLflow may wrap the SQLAlchemy error in its own
        if isinstance(getattr(link, "orig", None), BaseException):
            cause = link.orig  # type: ignore[attr-defined]
            break
        link = link.__cause__ or link.__context__
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def _metric_key(key: str) -> str:
    # MLflow allows only alphanumerics, _ - . space / in keys: '@' (as in ndcg@10) is not among them
    return key.replace("@", "_at_")
