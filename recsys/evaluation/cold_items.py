"""Cold items: hold a set of items out of training entirely, add them afterwards by text, and measure.

Protocol (`hold_out_items`): a seeded random share of the items with at least `min_interactions` interactions
is held out; EVERY interaction with them is removed from the log the model is trained on (train, validation
and test alike), so the model never sees their ids. Each user who interacted with a held-out item gives one
target: the first held-out item in their chronological sequence, with the items before it (all seen in
training) as the history. After training, the held-out items are added by text (`recsys index add-items`)
and `cold_item_hit_rate` asks the model for each history's top k over the whole grown catalogue, the
history excluded, as `Recommender.recommend` does. Random ranking hits with probability k / (catalogue
size - distinct history items) per user; that expectation is reported beside the hit rate.

An id-based model cannot take part: it has no vector for an id it never saw (add-items refuses it).

This is an evaluation protocol, so it lives in `recsys.evaluation`, below `recsys.retrieval`: it never imports
`Recommender`, only states what it asks of one (`ColdItemRecommender`), which `Recommender` fulfils.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from recsys.data import schema

KS = (10, 50)


class ColdItemRecommender(Protocol):
    """What `cold_item_hit_rate` asks of a recommender (`recsys.retrieval.Recommender` is one)."""

    n_items: int

    def recommend_batch(self, *, histories: list[list[Any]], k: int) -> list[list[Any]]:
        """Per history, the top k recommendations (each with an `item_id`), the history excluded."""
        ...

    def split_known(self, item_ids: list[Any]) -> tuple[list[Any], list[Any]]:
        """(known, unknown) item ids of the catalogue, in input order."""
        ...


@dataclass(frozen=True)
class ColdItemSplit:
    """What `hold_out_items` returns."""

    interactions: pl.DataFrame
    """The log without any interaction with a held-out item: what the model trains on."""
    held_items: pl.DataFrame
    """The item-table rows of the held-out items: what is added by text after training."""
    targets: pl.DataFrame
    """user_id, history (item ids, oldest first), target (a held-out item id): one row per user."""


def hold_out_items(interactions: pl.DataFrame, items: pl.DataFrame, share: float, seed: int,
                   min_interactions: int = 5, min_history: int = 3) -> ColdItemSplit:
    """Hold out `share` of the items with >= min_interactions interactions (see the module docstring).
    `interactions`: user_id, item_id, timestamp (and row, the tie-break, if present); `items`: item_id + text."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    counts = interactions.group_by(schema.ITEM_ID).len()
    candidates = sorted(counts.filter(pl.col("len") >= min_interactions)[schema.ITEM_ID].to_list())
    held = set(random.Random(seed).sample(candidates, max(1, round(share * len(candidates)))))
    order = [schema.USER_ID, schema.TIMESTAMP] + ([schema.ROW] if schema.ROW in interactions.columns else [])
    sequences = (interactions.lazy().sort(order)
                 .group_by(schema.USER_ID, maintain_order=True).agg(pl.col(schema.ITEM_ID)).collect())
    rows: list[dict[str, Any]] = []
    for user, sequence in sequences.iter_rows():
        first = next((t for t, item in enumerate(sequence) if item in held), None)
        if first is not None and first >= min_history:
            rows.append({schema.USER_ID: user, schema.HISTORY: sequence[:first], schema.TARGET: sequence[first]})
    id_type = interactions[schema.ITEM_ID].dtype
    targets = pl.DataFrame(rows, schema={schema.USER_ID: interactions[schema.USER_ID].dtype,
                                         schema.HISTORY: pl.List(id_type), schema.TARGET: id_type})
    is_held = pl.col(schema.ITEM_ID).is_in(sorted(held))
    return ColdItemSplit(interactions.filter(~is_held), items.filter(is_held), targets)


def write_training_files(split: ColdItemSplit, items: pl.DataFrame, folder: str | Path) -> list[str]:
    """Write the kept log and the item table as Parquet into `folder`; the `data.*` overrides that train on
    them as a custom dataset (the held-out items stay out of the catalogue: nobody interacted with them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    split.interactions.write_parquet(folder / "interactions.parquet")
    items.write_parquet(folder / "items.parquet")
    split.held_items.write_parquet(folder / "held_items.parquet")
    return ["data.name=custom", f"data.interactions_file={folder / 'interactions.parquet'}",
            f"data.items_file={folder / 'items.parquet'}", "data.path=null"]


def cold_item_hit_rate(recommender: ColdItemRecommender, targets: pl.DataFrame, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """HR@k of the held-out targets from each history (a Recommender over the grown catalogue), and the
    expected HR@k of a random ranking over the same candidates."""
    histories = targets[schema.HISTORY].to_list()
    wanted = targets[schema.TARGET].to_list()
    with warnings.catch_warnings():  # history items the data filters dropped from the catalogue are skipped
        warnings.simplefilter("ignore")
        top = recommender.recommend_batch(histories=histories, k=max(ks))
    result: dict[str, float] = {"n_users": float(len(wanted)), "n_items": float(recommender.n_items)}
    for k in ks:
        hits = [target in {r.item_id for r in recs[:k]} for recs, target in zip(top, wanted)]
        candidates = [recommender.n_items - len(set(recommender.split_known(h)[0])) for h in histories]
        result[f"hr@{k}"] = sum(hits) / max(1, len(hits))
        result[f"random_hr@{k}"] = sum(k / c for c in candidates) / max(1, len(candidates))
    return result
