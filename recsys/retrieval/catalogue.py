"""Change a saved model's catalogue without retraining: new items from their text, or a catalogue prior.

    recsys index add-items --model runs/<run>/model --items new_movies.csv [--out DIR]
    recsys index set-prior --model runs/<run>/model --interactions ratings.csv [--weight 1] [--out DIR]
    recsys index set-catalogue --model runs/<run>/model ml-latest-small [--prior] [--out DIR]

New items and another catalogue need a model that reads items as text (recformer, recformer_full): its item
vectors are a function of the text alone, so a new item's vector is what it would have been had the item existed
at training time. An id-based model (SASRec, BERT4Rec, GRU4Rec, most popular) has nothing to say about an id it never saw,
and refuses. A prior works with any model.

`set-prior` counts each catalogue item's interactions in a log and stores the counts with the model, whose
scores then add `weight * log(share of the interactions)` (`recsys.models.prior`): how a model trained with
`trainer.popularity_correction` gets the popularity of the catalogue it is pointed at. Nothing is trained.

`set-catalogue` points a text model at another dataset altogether (cross-catalogue transfer): every item of the
new catalogue is encoded from its text, and its users and histories replace the old ones, so
`recommend(user=...)` works for the new users; `--prior` also counts the new log for a catalogue prior.

Never in place: the result is a NEW model directory (default: `<model>-new-items`, `<model>-prior` or
`<model>-<dataset>`, then `-2`, `-3`, ...), written to a temporary folder and renamed into place by
`save_model`, with its FAISS index built inside. The original model directory is not touched, so a server still
reading it keeps working and a failed run leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data import schema
from recsys.config import DataConfig, to_dict
from recsys.models.base import SequenceModel
from recsys.data.item_text import catalogue_attributes, item_attributes, read_item_ids, read_new_items, text_columns_of
from recsys.errors import ConfigError, DataError
from recsys.models.prior import interaction_counts
from recsys.retrieval.index import IndexConfig
from recsys.saved_model import SavedModel, build_saved_model, item_prior_of, load_model_files, save_model


@dataclass(frozen=True)
class AddedItems:
    """What `add_items` wrote."""

    model_dir: Path
    """The new model directory."""
    item_ids: list[object]
    """The new items' original ids, in file order."""
    n_items: int
    """Catalogue size of the new model."""


def add_items(model_dir: str | Path, items_file: str | Path, out: str | Path | None = None,
              item_column: str = schema.ITEM_ID, index: str | IndexConfig = "flat") -> AddedItems:
    """Write a copy of the text model in `model_dir` whose catalogue also holds the items of `items_file`
    (CSV or Parquet: `item_column` plus the model's text columns); returns where it went."""
    from recsys.retrieval.recommender import Recommender

    model_dir = Path(model_dir)
    saved, model = _text_model(model_dir, "score new items without retraining")
    text_columns = list(saved.extra.get("text_columns") or text_columns_of(saved.items))
    known = set(saved.item_map[schema.ITEM_ID].to_list())
    new = read_new_items(items_file, saved.items, known, text_columns, item_column)
    model.add_items(item_attributes(new, text_columns))
    first = saved.n_items + 1
    new = new.with_columns(pl.int_range(first, first + new.height, dtype=pl.Int32).alias(schema.ITEM_IDX))
    item_map = pl.concat([saved.item_map, new.select(saved.item_map.columns)], how="vertical_relaxed")
    extra = {**_inherited(saved.extra, model_dir), "added_items": int(saved.extra.get("added_items", 0)) + new.height}
    prior = item_prior_of(saved, model_dir)
    if prior is not None:  # new items were never counted: they get the smallest prior
        extra["item_prior"] = {**prior, "counts": prior["counts"] + [0] * new.height}
    updated = SavedModel(
        model_name=saved.model_name, config=saved.config, state_dict=model.state_dict(), n_items=item_map.height,
        item_map=item_map, items=pl.concat([saved.items, new], how="diagonal_relaxed"),
        user_map=saved.user_map, histories=saved.histories, metrics=saved.metrics, extra=extra, bundle=saved.bundle,
    )
    target = Path(out) if out is not None else _free_sibling(model_dir, "new-items")
    save_model(updated, target)
    Recommender.load(target, index=index)  # builds the index of the grown catalogue and saves it beside
    return AddedItems(target, new[schema.ITEM_ID].to_list(), updated.n_items)


@dataclass(frozen=True)
class PriorSet:
    """What `set_prior` wrote."""

    model_dir: Path
    """The new model directory."""
    counted: int
    """Interactions of the log whose item is in the catalogue."""
    unknown: int
    """Interactions with an item id the catalogue does not have (not counted)."""
    items_counted: int
    """Catalogue items with at least one interaction in the log."""


def set_prior(model_dir: str | Path, interactions_file: str | Path, out: str | Path | None = None,
              item_column: str = schema.ITEM_ID, weight: float = 1.0,
              index: str | IndexConfig = "flat") -> PriorSet:
    """Write a copy of the model in `model_dir` whose scores add `weight * log p(item)`, p counted from the
    `item_column` of `interactions_file` (CSV or Parquet, one row per interaction); returns where it went.
    Any earlier prior of the model is replaced. Ids the catalogue lacks are skipped and counted in `unknown`;
    a log with none of the catalogue's ids is a DataError."""
    from recsys.retrieval.recommender import Recommender

    _check_weight(weight)
    model_dir = Path(model_dir)
    saved = load_model_files(model_dir)
    ids = read_item_ids(interactions_file, item_column, saved.item_map[schema.ITEM_ID].dtype)
    idx = pl.DataFrame({schema.ITEM_ID: ids}).join(saved.item_map, on=schema.ITEM_ID, how="left")[schema.ITEM_IDX]
    known = idx.drop_nulls().to_numpy()
    if len(known) == 0:
        raise DataError(f"{interactions_file}: none of the {len(idx)} ids in column {item_column!r} is in the "
                        f"model's catalogue (first: {ids[0]!r}; the catalogue's first: {saved.item_map[schema.ITEM_ID][0]!r})")
    counts = np.bincount(known, minlength=saved.n_items + 1)[1:]
    extra = {**_inherited(saved.extra, model_dir),
             "item_prior": _prior_field(counts.tolist(), weight, str(Path(interactions_file)))}
    updated = dataclasses.replace(saved, extra=extra)
    target = Path(out) if out is not None else _free_sibling(model_dir, "prior")
    save_model(updated, target)
    Recommender.load(target, index=index)  # checks the prior loads, builds and saves the index
    return PriorSet(target, len(known), len(idx) - len(known), int((counts > 0).sum()))


@dataclass(frozen=True)
class CatalogueSet:
    """What `set_catalogue` wrote."""

    model_dir: Path
    """The new model directory."""
    n_items: int
    """Items of the new catalogue."""
    n_users: int
    """Users of the new dataset, whose histories the new model directory holds."""
    text_columns: list[str]
    """The item-table columns the items were encoded from."""


def set_catalogue(model_dir: str | Path, data: DataConfig, out: str | Path | None = None, prior: bool = False,
                  weight: float = 1.0, index: str | IndexConfig = "flat") -> CatalogueSet:
    """Write a copy of the text model in `model_dir` whose catalogue, users and histories are those of the
    dataset `data` (prepared as for training), every item encoded from its text; nothing is trained. With
    `prior`, the new log's interaction counts become the model's catalogue prior (see `set_prior`)."""
    from recsys.data.prepare import prepare_dataset
    from recsys.data.splits import make_split
    from recsys.retrieval.recommender import Recommender

    _check_weight(weight)
    model_dir = Path(model_dir)
    saved, model = _text_model(model_dir, "score another catalogue's items")
    dataset = prepare_dataset(data, progress=True)
    text_columns = list(dataset.text_columns or text_columns_of(dataset.items))
    if not text_columns:
        raise ConfigError(f"dataset {data.name}: its item table has no text columns to encode the items from "
                          "(custom logs: --items-file and --text-columns)")
    model.set_item_texts(catalogue_attributes(dataset.items, text_columns, dataset.n_items))
    extra = {k: v for k, v in _inherited(saved.extra, model_dir).items()
             if k not in ("item_prior", "added_items", "mlflow_run_id")}
    extra.update(dataset=dataset.name, preset=dataset.preset, fingerprint=dataset.fingerprint,
                 text_columns=text_columns, trained_on=saved.extra.get("trained_on", saved.extra.get("dataset")))
    if prior:
        # Only what the dataset's split trains on (leave-one-out: all but each user's last two items), so that
        # `recsys evaluate` of the new model never counts its own validation and test targets into the prior.
        counts = interaction_counts(make_split(dataset, data).train[schema.ITEMS].to_list(), dataset.n_items)
        extra["item_prior"] = _prior_field(counts.tolist(), weight, f"dataset {dataset.name}, training split")
    # The run config now describes the new dataset, so `recsys evaluate` scores the model on it.
    config = {**saved.config, "data": to_dict(data)}
    updated = SavedModel(
        model_name=saved.model_name, config=config, state_dict=model.state_dict(), n_items=dataset.n_items,
        item_map=dataset.item_map, user_map=dataset.user_map, items=dataset.items,
        histories=dataset.sequences.select(schema.USER_IDX, schema.ITEMS),
        metrics={}, extra=extra, bundle=saved.bundle,  # the old metrics were measured on the old catalogue
    )
    target = Path(out) if out is not None else _free_sibling(model_dir, dataset.name)
    save_model(updated, target)
    Recommender.load(target, index=index)  # builds the index of the new catalogue and saves it beside
    return CatalogueSet(target, dataset.n_items, dataset.n_users, text_columns)


def _prior_field(counts: list[int], weight: float, source: str) -> dict[str, object]:
    """The manifest's `item_prior` (read back by `recsys.saved_model.item_prior_of`)."""
    return {"counts": counts, "weight": float(weight), "source": source}


def _check_weight(weight: float) -> None:
    if not (math.isfinite(weight) and weight >= 0):
        raise ConfigError(f"weight must be a non-negative number, got {weight}")


def _text_model(model_dir: Path, cannot: str) -> tuple[SavedModel, SequenceModel]:
    """The saved model and its plain module (no prior), if it reads items as text; else a ConfigError saying
    that an id-based model cannot do what was asked."""
    saved = load_model_files(model_dir)
    _, model = build_saved_model(saved, model_dir, with_prior=False)
    if not model.needs_item_texts:
        raise ConfigError(f"{model_dir}: a {saved.model_name} model knows items only by the ids it was trained on, "
                          f"so it cannot {cannot}; use a text model (model.name: recformer or recformer_full)")
    return saved, model


def _inherited(extra: dict[str, object], model_dir: Path) -> dict[str, object]:
    """Manifest fields a derived model directory keeps, and where it came from."""
    return {**{k: v for k, v in extra.items() if k != "recsys_version"}, "parent": str(model_dir.resolve())}


def _free_sibling(model_dir: Path, suffix: str) -> Path:
    candidate, n = model_dir.with_name(f"{model_dir.name}-{suffix}"), 1
    while candidate.exists():
        n += 1
        candidate = model_dir.with_name(f"{model_dir.name}-{suffix}-{n}")
    return candidate
