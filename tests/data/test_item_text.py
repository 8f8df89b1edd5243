"""Items as key-value text: what a text model reads of the item table."""

from __future__ import annotations

import polars as pl

from recsys.data.item_text import catalogue_attributes, item_attributes


def test_attributes_skip_empty_values_and_join_lists() -> None:
    items = pl.DataFrame({"item_idx": [2, 1, 3], "item_id": [20, 10, 30], "title": ["Heat", "Toy Story", None],
                          "year": [1995, None, 1979], "genres": [["Action", "Crime"], ["Animation"], []]})
    assert item_attributes(items, ["title", "year", "genres"])[0] == {"title": "Heat", "year": "1995",
                                                                      "genres": "Action, Crime"}
    by_idx = catalogue_attributes(items, ["title", "year", "genres"], n_items=4)
    assert by_idx == [{"title": "Toy Story", "genres": "Animation"}, {"title": "Heat", "year": "1995",
                      "genres": "Action, Crime"}, {"year": "1979"}, {}]  # item 4 is not in the table
    assert item_attributes(items, ["title", "no_such_column"])[1] == {"title": "Toy Story"}
