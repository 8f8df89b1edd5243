"""The notebooks in notebooks/ run top to bottom (quick settings), so they can never rot.

Each one is executed by a real Jupyter kernel (nbclient) in an empty working folder, with
RECSYS_NOTEBOOK_QUICK=1 (fewer epochs) and TMPDIR pointing into the test's own folder, where the notebooks
create their MLflow store and run folders. Each test then checks an output that shows the notebook did its
job, and that nothing was written into the working folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
TIMEOUT_S = 300  # per cell; the slowest quick cell (four models in a row) takes well under a minute


def run_notebook(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], int, Path]:
    """Execute notebooks/<name>; returns (text outputs per code cell, number of images, the working folder)."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("RECSYS_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    texts, images = [], 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            data = output.get("data", {})
            parts.append(data.get("text/plain", ""))
            images += "image/png" in data
        texts.append("\n".join(parts))
    return texts, images, cwd


def assert_wrote_nothing_outside(cwd: Path, tmp_path: Path) -> None:
    assert list(cwd.iterdir()) == [], "a notebook wrote into its working folder"
    assert any((tmp_path / "tmp").glob("recsys-*/mlflow.db")), "the MLflow store is not in the temporary folder"


@pytest.mark.slow
def test_quickstart_trains_plots_and_recommends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts, images, cwd = run_notebook("01_quickstart.ipynb", tmp_path, monkeypatch)
    output = "\n".join(texts)
    assert "610 users, 9,724 items, 100,836 interactions" in output
    assert images >= 1  # the learning curves read back from MLflow
    assert "recommended next" in output  # the by-hand top-10 beside the recent history
    assert "the same items in the same order as by hand: True" in output
    assert_wrote_nothing_outside(cwd, tmp_path)


@pytest.mark.slow
def test_compare_models_reads_four_models_back_from_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts, images, cwd = run_notebook("02_compare_models.ipynb", tmp_path, monkeypatch)
    table = next(text for text in texts if "models on one split" in text)
    assert "4 models on one split: True" in table
    for model in ("popularity", "gru4rec", "sasrec", "bert4rec"):
        assert f"│ {model}" in table  # a row of the metrics table
    assert images >= 2  # NDCG@K against K with time against quality; learning curves
    assert_wrote_nothing_outside(cwd, tmp_path)


@pytest.mark.slow
def test_item_embeddings_map_and_neighbours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts, images, cwd = run_notebook("03_item_embeddings.ipynb", tmp_path, monkeypatch)
    neighbours = texts[-1]  # the last code cell: nearest neighbours per movie
    for movie in ("Toy Story", "Star Wars IV", "The Matrix", "Shrek"):
        assert movie in neighbours
    assert neighbours.count("(0.") + neighbours.count("(-0.") + neighbours.count("(1.") >= 5
    assert images >= 1  # the PCA map
    assert_wrote_nothing_outside(cwd, tmp_path)
