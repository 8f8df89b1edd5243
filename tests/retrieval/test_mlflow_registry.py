"""`recsys train --register NAME` as MLflow users expect: the registered version is the logged pyfunc (shown on
its run's page, with a signature: inputs, outputs and a `k` param), `mlflow.pyfunc.load_model("models:/NAME/1")`
and `mlflow models serve -m models:/NAME/1` both honour `params.k`, and bad input is a 400 with one line.

Real parts: the session's trained ml-latest-small SASRec in a real SQLite store (tests/retrieval/conftest.py,
trained and registered as `recsys train --register` does), and a real `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from recsys.retrieval import Recommender
from tests.processes import TEST_TIMEOUT_S, answers, free_port, running

REGISTERED = "recsys-retrieval-test"  # the name the `trained` fixture registers under
INPUTS = ["user_id", "items", "k", "timestamps", "at"]
OUTPUTS = ["query", "rank", "item_id", "title", "score"]
UNKNOWN_USER = 999_999  # ml-latest-small's users are 1..610


def _tracking_uri(store: Path) -> str:
    return f"sqlite:///{store / 'mlflow.db'}"


def _item_lists(frame: pd.DataFrame) -> list[list[int]]:
    return frame.groupby("query")["item_id"].apply(list).tolist()


def test_registered_version_is_the_logged_pyfunc_with_a_signature(trained: tuple[Path, object]) -> None:
    from mlflow.models import get_model_info

    from recsys.training.tracking import using_tracking_uri

    store, result = trained
    uri = _tracking_uri(store)
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version(REGISTERED, "1")
    assert version.source.startswith("models:/m-"), version.source  # the logged model, not runs:/<id>/model
    model_id = version.source[len("models:/"):]
    assert version.run_id == result.run_id
    assert float(version.tags["test_ndcg_at_10"]) == pytest.approx(result.metrics["test_ndcg@10"], rel=1e-5)
    logged = client.get_logged_model(model_id)
    run = client.get_run(result.run_id)
    assert logged.name == "pyfunc" and str(logged.status) == "READY"
    assert logged.source_run_id == result.run_id and logged.experiment_id == run.info.experiment_id
    # what the run page lists under "Logged models"
    assert [output.model_id for output in run.outputs.model_outputs] == [model_id]
    # at the step of the final metrics, which MLflow then shows on the model's page too
    assert run.outputs.model_outputs[0].step == int(result.metrics["epochs_run"])
    assert "test_ndcg_at_10" in {metric.key for metric in logged.metrics or []}
    assert logged.artifact_location.startswith((store / "mlartifacts").as_uri())  # beside the store, not ./mlruns

    with using_tracking_uri(uri):
        signature = get_model_info(f"models:/{REGISTERED}/1").signature
    assert signature.inputs.input_names() == INPUTS
    assert not any(column.required for column in signature.inputs.inputs)  # users, histories or both
    assert signature.outputs.input_names() == OUTPUTS
    assert [(p.name, p.dtype.name, p.default) for p in signature.params.params] == [("k", "long", 10)]


def test_the_registered_pyfunc_honours_params_k(trained: tuple[Path, object], tmp_path: Path) -> None:
    import mlflow.pyfunc

    from recsys.retrieval.pyfunc import RequestRejected
    from recsys.training.tracking import using_tracking_uri

    store, result = trained
    with using_tracking_uri(_tracking_uri(store)):
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/1", dst_path=str(tmp_path))
    rec = Recommender.load(result.model_dir)
    users = [1, 2, 3]
    two = model.predict(pd.DataFrame({"user_id": users}), params={"k": 2})
    assert _item_lists(two) == [[r.item_id for r in recs] for recs in rec.recommend_batch(users=users, k=2)]
    assert two["rank"].tolist() == [1, 2] * 3
    assert len(model.predict(pd.DataFrame({"user_id": users}))) == 30  # no params: the signature's default 10
    # a row's own k wins over the param; a row without one takes the param
    mixed = model.predict(pd.DataFrame({"user_id": [1, 2], "k": [3, None]}), params={"k": 2})
    assert mixed.groupby("query").size().tolist() == [3, 2]
    with pytest.raises(RequestRejected) as refused:
        model.predict(pd.DataFrame({"user_id": [UNKNOWN_USER]}), params={"k": 2})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert refused.value.message == f"user_id {UNKNOWN_USER} is not a known user of this model (610 users)"


# -- the pyfunc's refusals, on the tiny model (no training) -------------------------------------------------------


@pytest.mark.parametrize(("row", "reason"), [
    ({"user_id": [11, 12]}, "row 0: user_id must be an id (a number or a string), got [11, 12]"),
    ({"user_id": True}, "row 0: user_id must be an id (a number or a string), got True"),
    ({"items": "100,110"}, "row 0: items must be a list, got '100,110'"),
    ({"items": [100], "timestamps": "1"}, "row 0: timestamps must be a list, got '1'"),
    ({"user_id": 11, "k": "2"}, "row 0: k must be a whole number, got '2'"),
    ({"user_id": 11, "k": 2.5}, "row 0: k must be a whole number, got 2.5"),
    ({"k": 2}, "input needs a 'user_id' or an 'items' column (the columns read: user_id, items, k, timestamps, "
               "at), got ['k']"),
])
def test_rows_the_pyfunc_refuses_say_which_and_why(tiny_rec: Recommender, row: dict, reason: str) -> None:
    from recsys.errors import InvalidRequestError
    from recsys.retrieval.pyfunc import predict_frame

    with pytest.raises(InvalidRequestError) as refused:
        predict_frame(tiny_rec, pd.DataFrame([row]))
    assert str(refused.value) == reason


def test_a_gap_in_a_mixed_frame_is_no_value(tiny_rec: Recommender) -> None:
    """Users and histories in one frame leave NaN in each other's columns (and make user ids floats)."""
    from recsys.retrieval.pyfunc import predict_frame

    out = predict_frame(tiny_rec, pd.DataFrame([{"user_id": 11, "k": 3}, {"items": [100, 110]}]), default_k=2)
    assert out.groupby("query").size().tolist() == [3, 2]
    assert out[out["query"] == 0]["item_id"].tolist() == [r.item_id for r in tiny_rec.recommend(user=11, k=3)]


def test_a_refusal_keeps_its_one_line_when_the_scoring_server_rewrites_it() -> None:
    """MLflow's scoring server prefixes the message of an MlflowException from predict with the whole input
    frame (mlflow/pyfunc/scoring_server: `e.message = f"Failed to predict data '{data}'. \\nError: ..."`)."""
    import json

    from recsys.retrieval.pyfunc import RequestRejected

    refused = RequestRejected("user_id 7 is not a known user of this model (5 users)")
    refused.message = f"Failed to predict data '{pd.DataFrame({'user_id': [7]})}'. \nError: {refused.message}"
    answer = json.loads(refused.serialize_as_json())
    assert answer["message"] == "user_id 7 is not a known user of this model (5 users)"
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and refused.get_http_status_code() == 400


# -- mlflow models serve ----------------------------------------------------------------------------------------



@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)  # waits up to START_TIMEOUT_S for the server
def test_mlflow_models_serve_of_the_registered_version(trained: tuple[Path, object], tmp_path: Path) -> None:
    store, result = trained
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # serve starts `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": _tracking_uri(store), "MLFLOW_REGISTRY_URI": _tracking_uri(store),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    url = f"http://127.0.0.1:{port}"
    # `running` stops the whole process group (mlflow and the uvicorn workers it starts) however the test ends.
    with running([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{REGISTERED}/1",
                  "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"], tmp_path / "serve.log", env=env,
                 cwd=tmp_path, ready=answers(f"{url}/ping"), what=f"mlflow models serve to answer GET {url}/ping"):
        rec = Recommender.load(result.model_dir)

        def invoke(body: dict) -> httpx.Response:
            return httpx.post(f"{url}/invocations", json=body, timeout=60)

        response = invoke({"dataframe_records": [{"user_id": 42}], "params": {"k": 2}})
        assert response.status_code == 200, response.text
        rows = response.json()["predictions"]
        assert [row["item_id"] for row in rows] == [r.item_id for r in rec.recommend(user=42, k=2)]
        assert [row["rank"] for row in rows] == [1, 2]
        # users and histories in one request, a row's own k over the param
        response = invoke({"dataframe_records": [{"user_id": 1, "k": 3}, {"items": [1, 2, 3]}], "params": {"k": 2}})
        assert response.status_code == 200, response.text
        assert [[row["rank"] for row in response.json()["predictions"] if row["query"] == q] for q in (0, 1)] == \
            [[1, 2, 3], [1, 2]]

        for body, reason in [
            ({"dataframe_records": [{"user_id": UNKNOWN_USER}], "params": {"k": 2}},
             f"user_id {UNKNOWN_USER} is not a known user of this model (610 users)"),
            ({"dataframe_records": [{"items": "1,2,3"}]}, "row 0: items must be a list, got '1,2,3'"),
            ({"dataframe_records": [{"user_id": 42, "k": 0}]}, "k must be at least 1, got 0"),
        ]:
            response = invoke(body)
            assert response.status_code == 400, response.text
            answer = response.json()
            assert (answer["error_code"], answer["message"]) == ("INVALID_PARAMETER_VALUE", reason), response.text
            assert "stack_trace" not in answer and "\\n" not in response.text  # one line, no traceback
