"""The saved model as an MLflow pyfunc, so `mlflow models serve` and `mlflow.pyfunc.load_model` can use it.

Input: a pandas DataFrame, one query per row, with a `user_id` column (known users) and/or an `items` column
(lists of original item ids, oldest first; used where user_id is missing), plus optional columns `k` (default:
the `k` param, else 10), `timestamps` (one list per `items` row: seconds, one per item) and `at` (seconds: when
the recommendation is asked for), which models that read time use and others ignore. Output: a DataFrame with one row per recommendation: `query` (the input
row's position), `rank` (1 = best), `item_id`, `title`, `score`. Seen items are excluded, unknown history items
skipped (as `Recommender.recommend` does by default).

The pyfunc holds the model directory as an artifact (`artifacts/model_dir`) and the recsys package as code,
so it loads wherever its pip requirements are installed. It is logged as "models from code"
(`pyfunc_model.py`): nothing is pickled, and loading runs only recsys's own source.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from recsys.errors import InvalidRequestError
from recsys.saved_model import read_manifest

MODEL_DIR_ARTIFACT = "model_dir"
DEFAULT_K = 10
# Packages the wrapper needs at predict time (recsys itself travels as code).
RUNTIME_PACKAGES = ("torch", "faiss-cpu", "polars", "numpy", "pandas", "safetensors", "pyyaml", "mlflow")


class RecsysPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """`Recommender` behind MLflow's pyfunc interface; see the module docstring for the frames."""

    def load_context(self, context: Any) -> None:
        from recsys.retrieval.recommender import Recommender

        # save_index=False: the artifact folder may be read-only or shared; a flat index builds in milliseconds.
        self.recommender = Recommender.load(context.artifacts[MODEL_DIR_ARTIFACT], save_index=False)

    # pd.DataFrame is the hint MLflow takes as "no input schema, no validation" (as no hint did, but without
    # MLflow's warning "Add type hints to the predict method" at every run: a filter cannot hide that one,
    # MLflow turns UserWarnings back on around its check). `_as_frame` still takes a dict or list too.
    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        return predict_frame(self.recommender, _as_frame(model_input), int((params or {}).get("k", DEFAULT_K)))


def predict_frame(recommender: Any, frame: pd.DataFrame, default_k: int = DEFAULT_K) -> pd.DataFrame:
    """Recommendations for every row of `frame` (see the module docstring), batched per (kind, k)."""
    if "user_id" not in frame.columns and "items" not in frame.columns:
        raise InvalidRequestError(f"input needs a 'user_id' or an 'items' column, got {list(frame.columns)}")
    # rows asked the same way (user or items, k, with or without timestamps and at) go in one batch
    groups: dict[tuple[str, int, bool, bool], list[tuple[int, Any, Any, Any]]] = {}
    for position, row in enumerate(frame.to_dict("records")):
        k = row.get("k", default_k)
        k = default_k if _missing(k) else int(k)
        user, at, times = row.get("user_id"), row.get("at"), row.get("timestamps")
        times = None if times is None or isinstance(times, float) else list(times)
        at = None if _missing(at) else at
        if not _missing(user):
            groups.setdefault(("user", k, False, at is not None), []).append((position, user, None, at))
        elif row.get("items") is not None and not isinstance(row.get("items"), float):
            key = ("items", k, times is not None, at is not None)
            groups.setdefault(key, []).append((position, list(row["items"]), times, at))
        else:
            raise InvalidRequestError(f"row {position}: neither a user_id nor a list of items")
    out: list[dict[str, Any]] = []
    for (kind, k, timed, asked_at), rows in groups.items():
        values = [value for _, value, _, _ in rows]
        at = [row_at for _, _, _, row_at in rows] if asked_at else None
        results = (recommender.recommend_batch(users=values, k=k, at=at) if kind == "user"
                   else recommender.recommend_batch(histories=values, k=k, at=at,
                                                    timestamps=[t for _, _, t, _ in rows] if timed else None))
        for (position, _, _, _), recs in zip(rows, results):
            out.extend({"query": position, "rank": rank, "item_id": rec.item_id, "title": rec.title,
                        "score": rec.score} for rank, rec in enumerate(recs, start=1))
    columns = ["query", "rank", "item_id", "title", "score"]
    return pd.DataFrame(out, columns=columns).sort_values(["query", "rank"], kind="stable").reset_index(drop=True)


def log_pyfunc(model_dir: str | Path, tracking_uri: str | None = None, run_id: str | None = None,
               experiment: str | None = None, artifact_path: str = "pyfunc") -> str:
    """Log `model_dir` as a pyfunc model into run `run_id` (or a new run of `experiment`) at
    `artifact_path`; returns its URI, `runs:/<run_id>/<artifact_path>`, for `mlflow.pyfunc.load_model` or
    `mlflow models serve -m`. Uses only an MlflowClient (no global MLflow state is changed)."""
    from mlflow.tracking import MlflowClient

    from recsys.training.tracking import artifact_root, resolve_tracking_uri

    read_manifest(model_dir)  # a clear ModelLoadError before anything is logged
    if (run_id is None) == (experiment is None):
        raise InvalidRequestError("log_pyfunc needs exactly one of run_id or experiment")
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    new_run = run_id is None
    if run_id is None:
        found = client.get_experiment_by_name(experiment)
        # a new experiment keeps its artifacts beside the store, as training's do, not in ./mlruns of the caller
        experiment_id = (found.experiment_id if found is not None else
                         client.create_experiment(experiment, artifact_location=artifact_root(uri, experiment)))
        run_id = client.create_run(experiment_id, run_name="recsys-pyfunc").info.run_id
    with tempfile.TemporaryDirectory(prefix="recsys-pyfunc-") as tmp:
        saved = Path(tmp) / artifact_path
        mlflow.pyfunc.save_model(
            path=str(saved),
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: no pickle
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            code_paths=[_package_copy(Path(tmp) / "code")],
            pip_requirements=_requirements(),
        )
        client.log_artifacts(run_id, str(saved), artifact_path)
    if new_run:
        client.set_terminated(run_id)
    return f"runs:/{run_id}/{artifact_path}"


def _package_copy(into: Path) -> str:
    """The recsys package without caches or the embedded datasets (a served model needs neither)."""
    import recsys

    target = into / "recsys"
    shutil.copytree(Path(recsys.__file__).parent, target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "embedded"))
    return str(target)


def _requirements() -> list[str]:
    out = []
    for name in RUNTIME_PACKAGES:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def _as_frame(model_input: Any) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    return pd.DataFrame(model_input)  # a list of records, a dict of columns


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array is not a missing scalar
        return False
