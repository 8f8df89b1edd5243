"""New items without retraining: encode their text with a text model and add them to its catalogue and index.

    recsys index add-items --model runs/<run>/model --items new_movies.csv [--out DIR]

Only a model that reads items as text (Recformer) can do this: its item vectors are a function of the text
alone, so a new item's vector is what it would have been had the item existed at training time. An id-based
model (SASRec, BERT4Rec, GRU4Rec, most popular) has nothing to say about an id it never saw, and refuses.

Never in place: the result is a NEW model directory (default: `<model>-new-items`, then `-2`, `-3`, ...), the
original catalogue plus the new items (item_map, items table, the model's buffers, manifest), written to a
temporary folder and renamed into place by `save_model`, with its FAISS index built inside. The original model
directory is not touched, so a server still reading it keeps working and a failed run leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.data import schema
from recsys.data.item_text import item_attributes, read_new_items, text_columns_of
from recsys.errors import ConfigError
from recsys.retrieval.index import IndexConfig
from recsys.saved_model import SavedModel, build_saved_model, load_model_files, save_model


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
    saved = load_model_files(model_dir)
    _, model = build_saved_model(saved, model_dir)
    if not hasattr(model, "add_items"):
        raise ConfigError(f"{model_dir}: a {saved.model_name} model knows items only by the ids it was trained on, "
                          "so it cannot score new items without retraining; use a text model (model.name: recformer)")
    text_columns = list(saved.extra.get("text_columns") or text_columns_of(saved.items))
    known = set(saved.item_map[schema.ITEM_ID].to_list())
    new = read_new_items(items_file, saved.items, known, text_columns, item_column)
    model.add_items(item_attributes(new, text_columns))  # type: ignore[operator]
    first = saved.n_items + 1
    new = new.with_columns(pl.int_range(first, first + new.height, dtype=pl.Int32).alias(schema.ITEM_IDX))
    item_map = pl.concat([saved.item_map, new.select(saved.item_map.columns)], how="vertical_relaxed")
    updated = SavedModel(
        model_name=saved.model_name, config=saved.config, state_dict=model.state_dict(), n_items=item_map.height,
        item_map=item_map, items=pl.concat([saved.items, new], how="diagonal_relaxed"),
        user_map=saved.user_map, histories=saved.histories, metrics=saved.metrics,
        extra={**{k: v for k, v in saved.extra.items() if k != "recsys_version"}, "parent": str(model_dir.resolve()),
               "added_items": int(saved.extra.get("added_items", 0)) + new.height},
        bundle=saved.bundle,
    )
    target = Path(out) if out is not None else _free_sibling(model_dir)
    save_model(updated, target)
    Recommender.load(target, index=index)  # builds the index of the grown catalogue and saves it beside
    return AddedItems(target, new[schema.ITEM_ID].to_list(), updated.n_items)


def _free_sibling(model_dir: Path) -> Path:
    candidate, n = model_dir.with_name(f"{model_dir.name}-new-items"), 1
    while candidate.exists():
        n += 1
        candidate = model_dir.with_name(f"{model_dir.name}-new-items-{n}")
    return candidate
