"""The saved model as an MLflow pyfunc, so `mlflow models serve` and `mlflow.pyfunc.load_model` can use it.

Input: a pandas DataFrame, one query per row, with a `user_id` column (known users) and/or an `items` column
(lists of original item ids, oldest first; used where user_id is missing), plus optional columns `k`,
`timestamps` (one list per `items` row: seconds, one per item) and `at` (seconds: when the recommendation is
asked for), which models that read time use and others ignore. How many items a row gets: its own `k`, else
the `k` param (`{"params": {"k": 5}}` over HTTP, `predict(frame, params={"k": 5})`), else 10. Output: a
DataFrame with one row per recommendation: `query` (the input row's position), `rank` (1 = best), `item_id`,
`title`, `score`. Seen items are excluded, unknown history items skipped (as `Recommender.recommend` does by
default).

The logged model has a signature: the five input columns, all optional and typed Any (one request may mix
users and histories, which leaves NaN in the other column, and ids may be ints or strings: recsys checks the
values itself, with one-line errors), the output columns, and the `k` param (long, default 10). A request
recsys refuses (an unknown user, a bad k, an `items` that is no list) raises `RequestRejected`, which MLflow's
scoring server answers as a 400 `{"error_code": "INVALID_PARAMETER_VALUE", "message": <one line>}`.

The pyfunc holds the model directory as an artifact (`artifacts/<its folder name>`) and the recsys package as
code, so it loads wherever its pip requirements are installed. It is logged as "models from code"
(`pyfunc_model.py`): nothing is pickled, and loading runs only recsys's own source.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from recsys.errors import InvalidRequestError, RecsysError
from recsys.saved_model import ITEM_MAP, USER_MAP, read_manifest

MODEL_DIR_ARTIFACT = "model_dir"
PYFUNC_NAME = "pyfunc"  # the logged model's name, so runs:/<run_id>/pyfunc finds it too
DEFAULT_K = 10
INPUT_COLUMNS = ("user_id", "items", "k", "timestamps", "at")
OUTPUT_COLUMNS = ("query", "rank", "item_id", "title", "score")
# Packages the wrapper needs at predict time (recsys itself travels as code).
RUNTIME_PACKAGES = ("torch", "faiss-cpu", "polars", "numpy", "pandas", "safetensors", "pyyaml", "mlflow")


class RequestRejected(MlflowException):  # type: ignore[misc]
    """A request recsys refuses, raised from `predict` so that MLflow's scoring server answers it with HTTP 400
    and `{"error_code": "INVALID_PARAMETER_VALUE", "message": <the one line>}` (any other exception becomes a
    generic message plus a `stack_trace` field).

    The server rewrites the `message` of an MlflowException from predict to "Failed to predict data '<the
    whole input frame, printed over many lines>'. \nError: <message>", which turns a one-line reason into a
    screenful that ends with it; so the first message set (ours, in `__init__`) is the one kept."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):
            self._line = value


class RecsysPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """`Recommender` behind MLflow's pyfunc interface; see the module docstring for the frames."""

    def load_context(self, context: Any) -> None:
        from recsys.retrieval.recommender import Recommender

        # save_index=False: the artifact folder may be read-only or shared; a flat index builds in milliseconds.
        self.recommender = Recommender.load(context.artifacts[MODEL_DIR_ARTIFACT], save_index=False)

    # pd.DataFrame is the hint MLflow takes as "no input schema from the hint" (the logged signature is the
    # schema), without MLflow's warning "Add type hints to the predict method" at every run: a filter cannot
    # hide that one, MLflow turns UserWarnings back on around its check. `_as_frame` still takes a dict or list.
    def predict(self, context, model_input: pd.DataFrame, params=None):  # type: ignore[no-untyped-def]
        try:
            default_k = _k_value((params or {}).get("k", DEFAULT_K), "the k param")
            return predict_frame(self.recommender, _as_frame(model_input), default_k)
        except RecsysError as exc:
            raise RequestRejected(str(exc)) from None


def predict_frame(recommender: Any, frame: pd.DataFrame, default_k: int = DEFAULT_K) -> pd.DataFrame:
    """Recommendations for every row of `frame` (see the module docstring), batched per (kind, k)."""
    if "user_id" not in frame.columns and "items" not in frame.columns:
        raise InvalidRequestError(f"input needs a 'user_id' or an 'items' column (the columns read: "
                                  f"{', '.join(INPUT_COLUMNS)}), got {list(frame.columns)}")
    # rows asked the same way (user or items, k, with or without timestamps and at) go in one batch
    groups: dict[tuple[str, int, bool, bool], list[tuple[int, Any, Any, Any]]] = {}
    for position, row in enumerate(frame.to_dict("records")):
        k = row.get("k", default_k)
        k = default_k if _missing(k) else _k_value(k, f"row {position}: k")
        user, at, times = row.get("user_id"), row.get("at"), row.get("timestamps")
        times = None if _missing(times) else _id_list(times, f"row {position}: timestamps")
        at = None if _missing(at) else at
        if not _missing(user):
            user = _scalar_id(user, f"row {position}: user_id")
            groups.setdefault(("user", k, False, at is not None), []).append((position, user, None, at))
        elif not _missing(row.get("items")):
            key = ("items", k, times is not None, at is not None)
            groups.setdefault(key, []).append((position, _id_list(row["items"], f"row {position}: items"), times, at))
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
    return (pd.DataFrame(out, columns=list(OUTPUT_COLUMNS)).sort_values(["query", "rank"], kind="stable")
            .reset_index(drop=True))


def log_pyfunc(model_dir: str | Path, tracking_uri: str | None = None, run_id: str | None = None,
               experiment: str | None = None, name: str = PYFUNC_NAME) -> str:
    """Log `model_dir` as an MLflow pyfunc model (a logged model, shown on its run's page) of run `run_id`, or
    of a new run of `experiment`, with a signature (see the module docstring) and an input example; returns
    its URI, `models:/<model_id>`, to register (`MlflowClient.create_model_version(source=...)`), load with
    `mlflow.pyfunc.load_model` or serve with `mlflow models serve -m` (`runs:/<run_id>/<name>` finds it too).
    MLflow's global tracking URI is set for the call and put back as it was."""
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from recsys.training.tracking import artifact_root, resolve_tracking_uri, using_tracking_uri

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
    # The logged model is created here, in the run's experiment: Model.log would put it in MLflow's active
    # experiment (Default, artifacts in ./mlruns of the working folder), whatever the run's.
    run = client.get_run(run_id)
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                        params=dict(run.data.params))
    with tempfile.TemporaryDirectory(prefix="recsys-pyfunc-") as tmp, using_tracking_uri(uri):
        # Model.log is mlflow.pyfunc.log_model for a given run and logged model: it links the model to the
        # run (its page lists it), writes the MLmodel, checks that the input example is answered as it
        # would be served, uploads the artifacts and marks the model READY
        info = Model.log(
            artifact_path=None,
            flavor=mlflow.pyfunc,
            name=name,
            run_id=run_id,
            model_id=logged.model_id,
            # the step of the run's final metrics (recsys training logs them at epochs_run): MLflow links
            # those to the model, and `runs:/<run_id>/pyfunc` of a resumed run finds the newest model
            step=int(run.data.metrics.get("epochs_run", 0)),
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: no pickle
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            code_paths=[_package_copy(Path(tmp) / "code")],
            pip_requirements=_requirements(),
            signature=pyfunc_signature(model_dir),
            input_example=(_input_example(model_dir), {"k": DEFAULT_K}),
        )
    if new_run:
        client.set_terminated(run_id)
    return str(info.model_uri)


def pyfunc_signature(model_dir: str | Path) -> Any:
    """Inputs (see the module docstring for why they are Any), outputs, and the `k` param."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(AnyType(), column, required=False) for column in INPUT_COLUMNS])
    item_type = {"Int64": DataType.long, "Int32": DataType.long, "String": DataType.string}.get(
        _parquet_column_type(Path(model_dir) / ITEM_MAP, "item_id"), AnyType())
    outputs = Schema([ColSpec(DataType.long, "query"), ColSpec(DataType.long, "rank"),
                      ColSpec(item_type, "item_id"), ColSpec(DataType.string, "title", required=False),
                      ColSpec(DataType.double, "score")])
    params = ParamSchema([ParamSpec("k", DataType.long, DEFAULT_K)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _input_example(model_dir: str | Path) -> pd.DataFrame:
    """One known user, or (for a model without users) a history of one known item."""
    import polars as pl

    users = pl.read_parquet(Path(model_dir) / USER_MAP, columns=["user_id"], n_rows=1)
    if users.height:
        return pd.DataFrame({"user_id": users["user_id"].to_list()})
    items = pl.read_parquet(Path(model_dir) / ITEM_MAP, columns=["item_id"], n_rows=1)
    return pd.DataFrame({"items": [items["item_id"].to_list()]})


def _parquet_column_type(path: Path, column: str) -> str:
    import polars as pl

    return str(pl.read_parquet_schema(path).get(column))


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


def _k_value(value: Any, what: str) -> int:
    """A whole number of recommendations (2.0 from a JSON column with gaps counts as 2); its range is checked
    by the Recommender."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer():
        raise InvalidRequestError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _id_list(value: Any, what: str) -> list[Any]:
    """A list of ids or timestamps as sent (a JSON list arrives as a list, a parquet one as an array)."""
    if isinstance(value, dict) or not isinstance(value, _LISTS):
        raise InvalidRequestError(f"{what} must be a list, got {value!r}"[:300])
    return list(value)


def _scalar_id(value: Any, what: str) -> Any:
    """A user id as the model's map holds it: an int (1.0 from a JSON column with gaps is 1) or a string."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, str, np.integer)):
        raise InvalidRequestError(f"{what} must be an id (a number or a string), got {value!r}"[:300])
    return value


_LISTS = (list, tuple, np.ndarray, pd.Series, dict)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, _LISTS):  # a value, not a gap (pd.isna([nan]) would say "missing")
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array is not a missing scalar
        return False
