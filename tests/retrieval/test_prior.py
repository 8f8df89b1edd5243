"""A catalogue prior (`recsys index set-prior`): counts from an interaction log, added to a saved model's
scores as weight * log share, through the same FAISS inner-product retrieval as every model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.cli import main
from recsys.errors import ModelLoadError
from recsys.models.prior import WithItemPrior, log_prior
from recsys.retrieval import Recommender
from recsys.saved_model import build_saved_model, load_model_files

from .conftest import HISTORIES, ITEM_IDS, N_ITEMS


def test_log_prior_is_the_add_one_smoothed_log_share_with_zero_for_padding() -> None:
    got = log_prior([3, 0, 1])
    want = torch.tensor([0.0, math.log(4 / 7), math.log(1 / 7), math.log(2 / 7)])
    torch.testing.assert_close(got, want)
    for bad in ([], [1, -1]):
        with pytest.raises(ValueError):
            log_prior(bad)


def test_the_prior_is_added_to_every_score_and_stays_one_inner_product(tiny_saved) -> None:
    _, model = build_saved_model(tiny_saved, "tiny")
    counts = list(range(N_ITEMS))
    wrapped = WithItemPrior(model, counts, weight=0.5).eval()
    items = torch.tensor([[0, 0, 1, 2, 3], [5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = model.score(items) + 0.5 * log_prior(counts)
        torch.testing.assert_close(wrapped.score(items), want)
        torch.testing.assert_close(wrapped.user_vector(items) @ wrapped.item_vectors().T, want)
    with pytest.raises(ValueError, match="29 counts but the model's catalogue has 30 items"):
        WithItemPrior(model, counts[1:])


def write_log(path: Path, item_ids: list[object], column: str = "movieId") -> Path:
    path.write_text(f"userId,{column}\n" + "".join(f"1,{item}\n" for item in item_ids))
    return path


def test_set_prior_writes_a_new_model_whose_recommendations_add_the_counted_prior(
        tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Item 390 four times, 380 twice, 100 once, and two ids the catalogue does not have.
    log = write_log(tmp_path / "ratings.csv", [390, 380, 390, 100, 999999, 390, 380, 390, 5])
    manifest_before = (tiny_dir / "manifest.json").read_text()
    out = tmp_path / "with-prior"
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(log),
                 "--item-column", "movieId", "--weight", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "counted 7 interactions over 3 catalogue items; skipped 2 with ids not in the catalogue" in printed
    assert str(out) in printed
    assert (tiny_dir / "manifest.json").read_text() == manifest_before  # the original is never changed
    assert (out / "index-flat.faiss").is_file()

    counts = [0] * N_ITEMS
    for item, n in ((390, 4), (380, 2), (100, 1)):
        counts[ITEM_IDS.index(item)] = n
    assert load_model_files(out).extra["item_prior"]["counts"] == counts

    plain, rec = Recommender.load(tiny_dir), Recommender.load(out)
    history = HISTORIES[11]
    _, model = build_saved_model(load_model_files(tiny_dir), "tiny")
    with torch.no_grad():
        idx = torch.tensor([[ITEM_IDS.index(i) + 1 for i in history]])
        scores = (model.score(idx) + 2 * log_prior(counts))[0, 1:].numpy()
    scores[[ITEM_IDS.index(i) for i in history]] = -np.inf
    want = [ITEM_IDS[i] for i in np.argsort(-scores, kind="stable")[:5]]
    got = rec.recommend(history=history, k=5)
    assert [r.item_id for r in got] == want
    np.testing.assert_allclose([r.score for r in got], np.sort(scores)[::-1][:5], rtol=1e-5, atol=1e-5)
    assert [r.item_id for r in got] != [r.item_id for r in plain.recommend(history=history, k=5)]


def test_a_heavy_prior_ranks_by_the_counts(tiny_dir: Path, tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", [390] * 5 + [380] * 4 + [370] * 3 + [100] * 2, column="item_id")
    out = tmp_path / "heavy"
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(log),
                 "--weight", "1000", "--out", str(out)]) == 0
    rec = Recommender.load(out)
    assert [r.item_id for r in rec.recommend(history=[200], k=3)] == [390, 380, 370]
    assert [r.item_id for r in rec.recommend(history=[390], k=2)] == [380, 370]  # history still excluded


def test_set_prior_replaces_an_earlier_prior_and_names_free_siblings(tiny_dir: Path, tmp_path: Path) -> None:
    first = write_log(tmp_path / "a.csv", [390, 390], column="item_id")
    second = write_log(tmp_path / "b.csv", [100], column="item_id")
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(first)]) == 0
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(first)]) == 0
    siblings = sorted(p.name for p in tiny_dir.parent.iterdir() if p.name.startswith("model-prior"))
    assert siblings == ["model-prior", "model-prior-2"]
    assert main(["index", "set-prior", "--model", str(tiny_dir.parent / "model-prior"),
                 "--interactions", str(second), "--out", str(tmp_path / "again")]) == 0
    prior = load_model_files(tmp_path / "again").extra["item_prior"]
    assert prior["counts"][ITEM_IDS.index(100)] == 1 and sum(prior["counts"]) == 1 and prior["weight"] == 1.0


@pytest.mark.parametrize("content, column, expected", [
    ("userId,item_id\n1,100\n", "movieId", ["log.csv", "missing column 'movieId'"]),
    ("userId,item_id\n1,5\n2,6\n", "item_id", ["log.csv", "none of the 2 ids", "'item_id'", "catalogue"]),
    ("userId,item_id\n1,100\n2,abc\n", "item_id", ["log.csv", "row 3", "'abc'", "not an integer"]),
    ("userId,item_id\n1,100\n2,\n", "item_id", ["log.csv", "row 3", "empty"]),
    ("userId,item_id\n", "item_id", ["log.csv", "no rows"]),
])
def test_bad_logs_are_one_line_naming_the_file(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              content: str, column: str, expected: list[str]) -> None:
    (tmp_path / "log.csv").write_text(content)
    out = tmp_path / "out"
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(tmp_path / "log.csv"),
                 "--item-column", column, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and all(part in err for part in expected), err
    assert not out.exists()


@pytest.mark.parametrize("weight", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_weight_is_refused(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    weight: str) -> None:
    log = write_log(tmp_path / "log.csv", [100], column="item_id")
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(log), "--weight", weight]) == 2
    assert f"weight must be a non-negative number, got {float(weight)}" in capsys.readouterr().err


def test_a_prior_of_the_wrong_length_in_the_manifest_is_a_load_error(tiny_dir: Path, tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", [100], column="item_id")
    out = tmp_path / "p"
    assert main(["index", "set-prior", "--model", str(tiny_dir), "--interactions", str(log), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["item_prior"]["counts"] = manifest["item_prior"]["counts"][:-1]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"item_prior.counts must list one count per item \(30\), got 29"):
        Recommender.load(out)
