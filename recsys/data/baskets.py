"""Basket logs: orders (baskets, sessions) of several items each, where time may be only an order number.

Grocery logs such as Instacart's give no timestamps: each user's orders are numbered 1, 2, ... and carry the
days since the user's previous order (blank in the first) and the hour of the day. `order_timeline` turns
that into the seconds every other part of recsys reads:

    day(order k) = sum of days_since_prior over the user's orders 2..k      (day(order 1) = 0)
    timestamp    = day * 86400 + hour * 3600 + order_number                (hour 0 when no hour column)

and without a gap column one day per order number (timestamp = (order_number - first) * 86400 + order_number), so that time
still counts orders. The order number, as seconds, keeps two orders placed on one day and hour two times
(Instacart has orders 0 days apart at the same hour; as one time, a repeat across them would look like an
exact duplicate and be dropped). Every item of one order gets the order's timestamp; items of one order keep the order
of the file's rows (the `row` tie-break of recsys.data.sequences): Instacart's file is sorted by
add_to_cart_order, so that is the order items went into the cart. Each user's timeline starts at 0, so
timelines of different users share no origin (a global temporal split means nothing on them; leave-one-out
does). Instacart writes 30 for "30 days or more": a timeline is a lower bound after such a gap.

A basket log may also come as JSON, `{"user id": [[item, ...], [item, ...], ...], ...}`, baskets in order
(the Ta-Feng files of "A Next Basket Recommendation Reality Check", Li et al., 2023); `[-1]` entries are that
format's padding and are skipped. `read_basket_json` gives it the columns user_id, order_number (1, 2, ...)
and item_id, to be read with order_number_column: order_number.
"""

from __future__ import annotations

import json

import polars as pl

from recsys.data.io import Member
from recsys.errors import DataError

SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600
JSON_SUFFIXES = (".json", ".json.gz")
PADDING_BASKET = [-1]


def is_basket_json(member: Member) -> bool:
    return member.name.endswith(JSON_SUFFIXES)


def read_basket_json(member: Member) -> pl.DataFrame:
    """user_id, order_number, item_id (all text, as a CSV read gives them) of a `{user: [basket, ...]}` file."""
    try:
        data = json.loads(member.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{member.label}: not a JSON file of baskets ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{member.label}: expected a JSON object {{user id: [[item, ...], ...]}}, got "
                        f"{type(data).__name__}")
    users: list[str] = []
    orders: list[str] = []
    items: list[str] = []
    for user, baskets in data.items():
        if not isinstance(baskets, list) or not all(isinstance(b, list) for b in baskets):
            raise DataError(f"{member.label}: user {user!r}: expected a list of baskets (lists of item ids)")
        number = 0
        for basket in baskets:
            if basket == PADDING_BASKET or not basket:
                continue
            number += 1
            for item in basket:
                users.append(str(user))
                orders.append(str(number))
                items.append(str(item))
    return pl.DataFrame({"user_id": users, "order_number": orders, "item_id": items}, schema=dict.fromkeys(
        ("user_id", "order_number", "item_id"), pl.String))


def order_timeline(
    user: pl.Series, order_number: pl.Series, days: pl.Series | None, hours: pl.Series | None, where: str,
    columns: tuple[str, str | None, str | None],
) -> pl.Series:
    """Int64 seconds per row from order numbers, gaps in days and hours (see the module doc).

    `where` names the file in errors; `columns` are the (order number, gap, hour) column names it read.
    """
    number_col, days_col, hour_col = columns
    numbers = _numbers(order_number, where, number_col, integer=True)
    frame = pl.DataFrame({"u": user, "n": numbers, "row": pl.int_range(user.len(), eager=True)})
    if days is not None:
        frame = frame.with_columns(d=_numbers(days, where, str(days_col), integer=False, nullable=True))
    if hours is not None:
        hour = _numbers(hours, where, str(hour_col), integer=False)
        if bool(((hour < 0) | (hour >= 24)).any()):
            row = int(((hour < 0) | (hour >= 24)).arg_true()[0])
            raise DataError(f"{where}: line {row + 2}: column {hour_col!r}: an hour must be in 0..23, got {hour[row]}")
        frame = frame.with_columns(h=hour)
    per_order = frame.group_by("u", "n", maintain_order=True).agg(
        *([pl.col("d").first()] if days is not None else []), *([pl.col("h").first()] if hours is not None else []))
    if days is not None:
        # The first order's gap is blank (nothing came before it); any other blank is a hole in the log.
        first = pl.col("n") == pl.col("n").min().over("u")
        missing = per_order.filter(pl.col("d").is_null() & ~first)
        if missing.height:
            raise DataError(f"{where}: column {days_col!r} is empty for user {missing['u'][0]}'s order "
                            f"{missing['n'][0]}, which is not their first")
        day = pl.when(first).then(0.0).otherwise(pl.col("d")).cum_sum().over("u", order_by="n")
    else:
        day = (pl.col("n") - pl.col("n").min().over("u")).cast(pl.Float64)
    hour_term = pl.col("h") * SECONDS_PER_HOUR if hours is not None else pl.lit(0.0)
    seconds = (day * SECONDS_PER_DAY + hour_term).floor().cast(pl.Int64) + pl.col("n")
    per_order = per_order.with_columns(t=seconds)
    return frame.join(per_order.select("u", "n", "t"), on=["u", "n"], how="left").sort("row")["t"]


def check_one_order_per_id(user: pl.Series, order_number: pl.Series, order_id: pl.Series, where: str,
                           column: str) -> None:
    """A DataError when one order id appears with two users or two order numbers: its items would be spread
    over two times."""
    frame = pl.DataFrame({"o": order_id, "u": user, "n": order_number})
    split = frame.group_by("o").agg(pl.struct("u", "n").n_unique().alias("k")).filter(pl.col("k") > 1)
    if split.height:
        raise DataError(f"{where}: column {column!r}: order {split['o'][0]!r} has rows of more than one user or "
                        "order number")


def _numbers(values: pl.Series, where: str, column: str, integer: bool, nullable: bool = False) -> pl.Series:
    text = values.cast(pl.String).str.strip_chars()
    text = text.replace("", None)
    parsed = text.cast(pl.Float64, strict=False)
    bad = (parsed.is_null() & text.is_not_null()) | (~parsed.is_finite() & parsed.is_not_null())
    if not nullable:
        bad = bad | text.is_null()
    if integer:
        bad = bad | (parsed.is_not_null() & (parsed != parsed.floor()))
    if bool(bad.any()):
        row = int(bad.arg_true()[0])
        shown = "empty" if text[row] is None else f"not {'an integer' if integer else 'a number'}: {text[row]!r}"
        raise DataError(f"{where}: line {row + 2}: column {column!r}: {shown}")
    if bool((parsed < 0).any()):
        row = int((parsed < 0).arg_true()[0])
        raise DataError(f"{where}: line {row + 2}: column {column!r}: must not be negative, got {text[row]!r}")
    return parsed.cast(pl.Int64) if integer else parsed
