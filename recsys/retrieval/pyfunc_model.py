"""The pyfunc model as MLflow "models from code": MLflow runs this file at load time instead of unpickling an
object, so loading the logged model executes only our own source, never a pickle."""

import warnings

from mlflow.models import set_model

from recsys.retrieval.pyfunc import RecsysPyfunc

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*type hints.*")  # see RecsysPyfunc.predict
    set_model(RecsysPyfunc())
