"""Fixtures shared by the live-history tests: one tiny saved model and the Recommender over it without a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.retrieval import Recommender
from recsys.saved_model import save_model
from tests.retrieval.conftest import tiny_saved_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tiny_saved_model(), tmp_path_factory.mktemp("events") / "model")


@pytest.fixture(scope="module")
def plain(model_dir: Path) -> Recommender:
    """The same model without a store: the reference, asked with explicit histories."""
    return Recommender.load(model_dir)
