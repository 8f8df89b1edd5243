"""Train / validation / test splits of prepared sequences.

leave_one_out (SASRec, BERT4Rec): a user's last item is the test target (history: everything before it),
the second-to-last the validation target (history: everything before that), and the model trains on the
rest. Users with fewer than 3 items cannot give both targets and a non-empty history: their whole sequence
goes to training and they are not evaluated (with the default min_user_interactions=5 there are none).

temporal: one global cut for everybody, at timestamp quantiles, so no model sees the future of the
evaluation period. With valid_cut = the `valid_quantile` and test_cut = the `test_quantile` of all
timestamps (the 'lower' quantile, so each cut is a timestamp that occurs):
  * train: every user's interactions strictly before valid_cut;
  * valid: users with an interaction in [valid_cut, test_cut); history = their items before valid_cut,
    target = their first item at or after valid_cut;
  * test: users with an interaction at or after test_cut; history = their items before test_cut, target =
    their first item at or after test_cut.
Users whose history would be empty (they arrive after the cut) are skipped in valid and test.

Every frame keeps the timestamps beside the items (train: `timestamps`; valid/test: `history_timestamps`
and `target_timestamp`), for models that read time; the target's timestamp is what a real request would not
know, so evaluation uses it only where asked to and says so.
"""

from __future__ import annotations

import polars as pl

from recsys.config import DataConfig
from recsys.data import schema
from recsys.data.dataset import PreparedDataset, Split
from recsys.errors import DataError

MIN_EVALUATED_LENGTH = 3
"""Leave-one-out evaluates users with at least this many items (train >= 1, valid and test targets)."""
SHOWN_IDS = 5
"""How many user ids a message names before '...'."""


def n_items() -> pl.Expr:
    return pl.col(schema.ITEMS).list.len()


def head_without_last(k: int, column: str = schema.ITEMS) -> pl.Expr:
    """The items (or their timestamps) except the last `k` (empty when there are no more than `k`)."""
    return pl.col(column).list.head((n_items() - k).clip(0))


def leave_one_out(sequences: pl.DataFrame) -> Split:
    """Last item: test target; second-to-last: validation target; the rest trains (see the module doc)."""
    evaluated = sequences.lazy().filter(n_items() >= MIN_EVALUATED_LENGTH)
    train = sequences.lazy().select(
        schema.USER_IDX,
        *[pl.when(n_items() >= MIN_EVALUATED_LENGTH).then(head_without_last(2, column))
          .otherwise(pl.col(column)).alias(column) for column in (schema.ITEMS, schema.TIMESTAMPS)],
    )
    valid = evaluated.select(schema.USER_IDX, *_history_and_target(2))
    test = evaluated.select(schema.USER_IDX, *_history_and_target(1))
    return Split("leave_one_out", _train_frame(train), _eval_frame(valid), _eval_frame(test))


def _history_and_target(k: int) -> list[pl.Expr]:
    """Leave-one-out's evaluation columns: the items before the k-th last, their timestamps, the k-th last
    item and its timestamp."""
    return [head_without_last(k).alias(schema.HISTORY),
            head_without_last(k, schema.TIMESTAMPS).alias(schema.HISTORY_TIMESTAMPS),
            pl.col(schema.ITEMS).list.get(-k).alias(schema.TARGET),
            pl.col(schema.TIMESTAMPS).list.get(-k).alias(schema.TARGET_TIMESTAMP)]


def temporal_split(sequences: pl.DataFrame, valid_quantile: float, test_quantile: float) -> Split:
    """Global cut at timestamp quantiles (see the module doc); needs the `timestamps` column."""
    if not 0.0 < valid_quantile <= test_quantile <= 1.0:
        raise DataError(
            f"temporal split: need 0 < valid_quantile <= test_quantile <= 1, got {valid_quantile} and {test_quantile}"
        )
    flat = (
        sequences.lazy()
        .select(schema.USER_IDX, schema.ITEMS, schema.TIMESTAMPS)
        .explode([schema.ITEMS, schema.TIMESTAMPS])
    )
    valid_cut, test_cut = _cuts(flat, valid_quantile, test_quantile)
    train = _before(flat, valid_cut, schema.ITEMS, schema.TIMESTAMPS)
    valid = _history_and_next(flat, valid_cut, test_cut)
    test = _history_and_next(flat, test_cut, None)
    return Split("temporal", _train_frame(train), _eval_frame(valid), _eval_frame(test))


def make_split(ds: PreparedDataset, cfg: DataConfig) -> Split:
    """The split `cfg.split` names, over `ds.sequences`."""
    if cfg.split == "leave_one_out":
        split = leave_one_out(ds.sequences)
    elif cfg.split == "temporal":
        split = temporal_split(ds.sequences, cfg.valid_quantile, cfg.test_quantile)
    else:
        raise DataError(f"split {cfg.split!r} is unknown (known: leave_one_out, temporal)")
    _require_targets(ds, cfg, split)
    return split


def _require_targets(ds: PreparedDataset, cfg: DataConfig, split: Split) -> None:
    """A split with no validation or no test target cannot early-stop or be scored: say why, before training
    starts (Lightning's own complaint is about a metric that 'is not available')."""
    empty = [name for name, frame in (("validation", split.valid), ("test", split.test)) if frame.height == 0]
    if not empty:
        return
    if cfg.split == "leave_one_out":
        longest = int(ds.sequences[schema.ITEMS].list.len().max() or 0)
        raise DataError(
            f"{ds.name}: leave-one-out needs users with at least {MIN_EVALUATED_LENGTH} interactions (training, "
            f"validation and test target), but none of the {ds.n_users:,} users has that many (longest: {longest}; "
            f"{_short_user_ids(ds)}); use a log with longer histories, or data.split=temporal")
    raise DataError(
        f"{ds.name}: the temporal split at data.valid_quantile={cfg.valid_quantile}, data.test_quantile="
        f"{cfg.test_quantile} leaves no {' and no '.join(empty)} target (no user has interactions on both sides of "
        "the cut); move the quantiles")


def not_evaluated(ds: PreparedDataset, split: Split) -> str | None:
    """A line on users the split trains on but does not evaluate (leave-one-out: fewer than 3 items)."""
    if split.kind != "leave_one_out":
        return None
    short = ds.n_users - split.test.height
    if short == 0:
        return None
    return (f"note: {short:,} of {ds.n_users:,} users have fewer than {MIN_EVALUATED_LENGTH} interactions "
            f"({_short_user_ids(ds)}): they only train, leave-one-out cannot evaluate them "
            f"(data.min_user_interactions={MIN_EVALUATED_LENGTH} drops them)")


def _short_user_ids(ds: PreparedDataset) -> str:
    """'ids 9, 10' or 'ids 1, 2, 3, 4, 5, ...': the original ids of the first users leave-one-out cannot evaluate."""
    short = ds.sequences.filter(n_items() < MIN_EVALUATED_LENGTH).select(schema.USER_IDX)
    ids = short.head(SHOWN_IDS).join(ds.user_map, on=schema.USER_IDX, how="left", maintain_order="left")
    shown = ", ".join(map(str, ids[schema.USER_ID].to_list())) + (", ..." if short.height > SHOWN_IDS else "")
    return f"id{'s' if short.height > 1 else ''} {shown}"


def _cuts(flat: pl.LazyFrame, valid_quantile: float, test_quantile: float) -> tuple[int, int]:
    ts = pl.col(schema.TIMESTAMPS)
    row = flat.select(
        ts.quantile(valid_quantile, interpolation="lower").alias("valid"),
        ts.quantile(test_quantile, interpolation="lower").alias("test"),
    ).collect()
    if row["valid"][0] is None:
        raise DataError("temporal split: the dataset has no interactions")
    return int(row["valid"][0]), int(row["test"][0])


def _before(flat: pl.LazyFrame, cut: int, items: str, timestamps: str) -> pl.LazyFrame:
    """Each user's items and their timestamps strictly before `cut`, in order (group_by keeps the row order
    within a group), as columns `items` and `timestamps`."""
    return (
        flat.filter(pl.col(schema.TIMESTAMPS) < cut)
        .group_by(schema.USER_IDX, maintain_order=True)
        .agg(pl.col(schema.ITEMS).alias(items), pl.col(schema.TIMESTAMPS).alias(timestamps))
    )


def _history_and_next(flat: pl.LazyFrame, cut: int, until: int | None) -> pl.LazyFrame:
    """History before `cut` and the first item at or after it (which must fall before `until`, if given)."""
    targets = (
        flat.filter(pl.col(schema.TIMESTAMPS) >= cut)
        .group_by(schema.USER_IDX, maintain_order=True)
        .agg(pl.col(schema.ITEMS).first().alias(schema.TARGET),
             pl.col(schema.TIMESTAMPS).first().alias(schema.TARGET_TIMESTAMP))
    )
    if until is not None:
        targets = targets.filter(pl.col(schema.TARGET_TIMESTAMP) < until)
    history = _before(flat, cut, schema.HISTORY, schema.HISTORY_TIMESTAMPS)
    return history.join(targets, on=schema.USER_IDX, how="inner")


def _train_frame(frame: pl.LazyFrame) -> pl.DataFrame:
    return (
        frame.filter(pl.col(schema.ITEMS).list.len() > 0)
        .select(pl.col(schema.USER_IDX).cast(pl.Int32), pl.col(schema.ITEMS).cast(pl.List(pl.Int32)),
                pl.col(schema.TIMESTAMPS).cast(pl.List(pl.Int64)))
        .sort(schema.USER_IDX)
        .collect()
    )


def _eval_frame(frame: pl.LazyFrame) -> pl.DataFrame:
    return (
        frame.select(
            pl.col(schema.USER_IDX).cast(pl.Int32),
            pl.col(schema.HISTORY).cast(pl.List(pl.Int32)),
            pl.col(schema.HISTORY_TIMESTAMPS).cast(pl.List(pl.Int64)),
            pl.col(schema.TARGET).cast(pl.Int32),
            pl.col(schema.TARGET_TIMESTAMP).cast(pl.Int64),
        )
        .sort(schema.USER_IDX)
        .collect()
    )
