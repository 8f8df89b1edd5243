"""Recommender: the public API on a tiny saved model, with hand-checked expectations against brute force."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.batches import left_pad
from recsys.errors import InvalidRequestError, ModelLoadError, NotFittedError, UnknownIdError
from recsys.retrieval import Recommendation, Recommender, UnknownItemsWarning
from recsys.retrieval.index import index_paths

from .conftest import HISTORIES, ITEM_IDS


def brute_force(rec: Recommender, history: list[int], k: int, exclude: set[int] = frozenset()) -> list[int]:
    """Original item ids of the top k by `model.score` (the training/evaluation contract), in plain torch."""
    idx = [ITEM_IDS.index(item) + 1 for item in history]
    with torch.no_grad():
        scores = rec._model.score(left_pad([np.asarray(idx)], rec._max_len))[0]  # [n_items + 1]
    scores[0] = -torch.inf
    for item in exclude:
        scores[ITEM_IDS.index(item) + 1] = -torch.inf
    return [ITEM_IDS[i - 1] for i in torch.topk(scores, k).indices.tolist()]


def ids(recs: list[Recommendation]) -> list[object]:
    return [r.item_id for r in recs]


def test_known_user_gets_brute_force_top_k_without_seen_items(tiny_rec: Recommender) -> None:
    recs = tiny_rec.recommend(user=12, k=5)
    assert ids(recs) == brute_force(tiny_rec, HISTORIES[12], 5, exclude=set(HISTORIES[12]))
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    assert all(isinstance(r.score, float) for r in recs)


def test_seen_items_come_back_when_exclude_seen_is_off(tiny_rec: Recommender) -> None:
    top = tiny_rec.recommend(user=14, k=30, exclude_seen=False)
    assert ids(top) == brute_force(tiny_rec, HISTORIES[14], 30)
    assert set(HISTORIES[14]) <= set(ids(top))


def test_raw_history_equals_the_known_user_with_the_same_history(tiny_rec: Recommender) -> None:
    assert tiny_rec.recommend(history=HISTORIES[12], k=4) == tiny_rec.recommend(user=12, k=4)


def test_ids_typed_as_text_find_integer_ids(tiny_rec: Recommender) -> None:
    assert tiny_rec.recommend(user="12", k=3) == tiny_rec.recommend(user=12, k=3)
    assert tiny_rec.recommend(history=["390", " 380"], k=3) == tiny_rec.recommend(history=[390, 380], k=3)


def test_titles_come_from_the_item_table_and_none_where_missing(tiny_rec: Recommender) -> None:
    recs = tiny_rec.recommend(history=[100], k=29)
    titles = {r.item_id: r.title for r in recs}
    assert titles[110] == "Item 110"
    assert titles[170] is None  # every 7th item has no title


def test_batch_equals_single_calls(tiny_rec: Recommender) -> None:
    users = [15, 11, 12, 13, 14]
    assert_same_recommendations(tiny_rec.recommend_batch(users=users, k=2),
                                [tiny_rec.recommend(user=u, k=2) for u in users])
    histories = [HISTORIES[u] for u in users]
    batch = tiny_rec.recommend_batch(histories=histories, k=2)
    assert_same_recommendations(batch, [tiny_rec.recommend(history=h, k=2) for h in histories])
    assert tiny_rec.recommend_batch(users=[], k=2) == []


def test_precomputed_user_vectors_give_the_same_recommendations(tiny_saved) -> None:
    rec = Recommender.from_saved(tiny_saved)
    users = [11, 12, 13, 14, 15]
    before = rec.recommend_batch(users=users, k=2)
    rec.precompute_user_vectors()
    after = rec.recommend_batch(users=users, k=2)
    assert [ids(r) for r in after] == [ids(r) for r in before]
    assert [r.score for row in after for r in row] == pytest.approx([r.score for row in before for r in row], abs=1e-5)
    assert rec.recommend(history=HISTORIES[12], k=2) == rec.recommend_batch(histories=[HISTORIES[12]], k=2)[0]


def test_allow_and_deny_lists(tiny_rec: Recommender) -> None:
    allowed = [100, 250, 260, 270, 280]
    recs = tiny_rec.recommend(user=11, k=4, allow=allowed)
    assert ids(recs) == [i for i in brute_force(tiny_rec, HISTORIES[11], 30) if i in allowed and i != 100][:4]
    top = ids(tiny_rec.recommend(user=11, k=3))
    denied = ids(tiny_rec.recommend(user=11, k=3, deny=top[:2] + [999999]))  # unknown deny ids are ignored
    assert not set(denied) & set(top[:2]) and denied[0] == top[2]
    both = ids(tiny_rec.recommend(user=11, k=2, allow=allowed, deny=[ids(recs)[0]]))
    assert both == ids(recs)[1:3]


def test_unknown_items_are_skipped_with_a_warning_or_raise(tiny_rec: Recommender) -> None:
    with pytest.warns(UnknownItemsWarning, match=r"skipped 2 unknown item ids: \[7, 'x'\]"):
        recs = tiny_rec.recommend(history=[7, 390, "x"], k=3)
    assert recs == tiny_rec.recommend(history=[390], k=3)
    with pytest.raises(UnknownIdError, match=r"unknown item ids \[7\]"):
        tiny_rec.recommend(history=[7, 390], k=3, on_unknown="error")
    with pytest.raises(InvalidRequestError, match="on_unknown must be 'skip' or 'error', got 'ignore'"):
        tiny_rec.recommend(history=[390], on_unknown="ignore")  # type: ignore[arg-type]


def test_empty_history_is_a_clear_error(tiny_rec: Recommender) -> None:
    with pytest.raises(InvalidRequestError, match="^history is empty: "):
        tiny_rec.recommend(history=[], k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownItemsWarning)
        with pytest.raises(InvalidRequestError, match=r"^history is empty after skipping 2 unknown item ids \[1, 2\]"):
            tiny_rec.recommend(history=[1, 2], k=3)


@pytest.mark.parametrize("k", [0, -3, 2.5, "10", True, None])
def test_k_must_be_a_positive_integer(tiny_rec: Recommender, k: object) -> None:
    with pytest.raises(InvalidRequestError, match="^k must be"):
        tiny_rec.recommend(user=11, k=k)  # type: ignore[arg-type]


def test_k_larger_than_what_survives_filtering_names_both_numbers(tiny_rec: Recommender) -> None:
    assert len(tiny_rec.recommend(user=15, k=2)) == 2
    with pytest.raises(InvalidRequestError, match=r"k=3 but only 2 items of the catalogue are left for user 15"):
        tiny_rec.recommend(user=15, k=3)
    # Repeated items in a history and deny ids that are also seen count once.
    repeated = HISTORIES[15] + HISTORIES[15][:3]
    assert ids(tiny_rec.recommend(history=repeated, k=2, deny=HISTORIES[15][:2])) == ids(tiny_rec.recommend(user=15, k=2))
    with pytest.raises(InvalidRequestError, match=r"k=3 but only 2 items of the catalogue are left for the history"):
        tiny_rec.recommend(history=repeated, k=3, deny=HISTORIES[15][:2])
    with pytest.raises(InvalidRequestError, match=r"k=31 but only 30 items"):
        tiny_rec.recommend(user=15, k=31, exclude_seen=False)
    with pytest.raises(InvalidRequestError, match=r"k=2 but only 1 items of the allow list are left for user 11"):
        tiny_rec.recommend(user=11, k=2, allow=[100, 200])


def test_unknown_user_names_the_id(tiny_rec: Recommender) -> None:
    with pytest.raises(UnknownIdError, match="user_id 99 is not a known user"):
        tiny_rec.recommend(user=99)
    with pytest.raises(UnknownIdError, match="user_id 99"):
        tiny_rec.recommend_batch(users=[11, 99])
    with pytest.raises(UnknownIdError, match=r"user_id \[11\]"):
        tiny_rec.recommend(user=[11])


def test_exactly_one_query_kind(tiny_rec: Recommender) -> None:
    with pytest.raises(InvalidRequestError, match="exactly one of user"):
        tiny_rec.recommend()
    with pytest.raises(InvalidRequestError, match="exactly one of user"):
        tiny_rec.recommend(user=11, history=[100])


def test_unloaded_recommender_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError, match="Recommender.load"):
        Recommender().recommend(user=1)


def test_load_from_directory_saves_the_index_and_reuses_it(tiny_dir: Path, tiny_rec: Recommender) -> None:
    manifest = (tiny_dir / "manifest.json").read_text()
    rec = Recommender.load(tiny_dir, index="hnsw")
    assert rec.format_version == 1 and rec.n_items == 30 and rec.n_users == 5 and rec.index_kind == "hnsw"
    # 30 items: HNSW is exact here (FAISS's dot products vs torch's: equal to float32 rounding)
    assert_same_recommendations([rec.recommend(user=12, k=5)], [tiny_rec.recommend(user=12, k=5)])
    index_file, meta_file = index_paths(tiny_dir, "hnsw")
    assert json.loads(meta_file.read_text())["n_items"] == 30
    assert (tiny_dir / "manifest.json").read_text() == manifest  # the manifest is never touched
    stamp = index_file.stat().st_mtime_ns
    Recommender.load(tiny_dir, index="hnsw")  # loads: checksums of the model files still match
    assert index_file.stat().st_mtime_ns == stamp
    index_file.unlink()
    Recommender.load(tiny_dir, index="hnsw")
    assert index_file.is_file()


def test_corrupt_index_is_rebuilt_with_a_warning(tiny_dir: Path) -> None:
    Recommender.load(tiny_dir)
    index_file = index_paths(tiny_dir, "flat")[0]
    index_file.write_bytes(index_file.read_bytes()[:-40])
    with pytest.warns(RuntimeWarning, match="index-flat.faiss: checksum does not match.*rebuilding"):
        rec = Recommender.load(tiny_dir)
    assert len(rec.recommend(user=11, k=3)) == 3


def test_model_dir_missing_a_file_or_of_another_version_is_a_model_load_error(tiny_dir: Path) -> None:
    (tiny_dir / "histories.parquet").unlink()
    with pytest.raises(ModelLoadError, match="missing file histories.parquet"):
        Recommender.load(tiny_dir)
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    (tiny_dir / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ModelLoadError, match="model format version 99 is not supported"):
        Recommender.load(tiny_dir)
    with pytest.raises(ModelLoadError, match="no such model directory"):
        Recommender.load(tiny_dir.parent / "nothing")


def test_user_history_and_item_lookup(tiny_rec: Recommender) -> None:
    assert tiny_rec.history(12) == HISTORIES[12]
    assert tiny_rec.item("110") == {"item_id": 110, "title": "Item 110"}
    with pytest.raises(UnknownIdError, match="item_id 'nope'"):
        tiny_rec.item("nope")
    assert tiny_rec.split_known([100, 5, "110", True]) == ([100, "110"], [5, True])


def assert_same_recommendations(got: list, want: list) -> None:
    """Same items in the same order and scores equal to float32 rounding (rel 1e-5): a batch and a single query,
    or FAISS and torch, sum the same dot products in another order, so scores differ in the 7th-8th digit
    (0.0011838972 vs 0.0011839084 on an AMD EPYC). These fixtures' scores are far apart, so no tie can swap items."""
    assert [[(r.item_id, r.title) for r in rows] for rows in got] == [[(r.item_id, r.title) for r in rows] for rows in want]
    for rows, expected in zip(got, want):
        assert [r.score for r in rows] == pytest.approx([r.score for r in expected], rel=1e-5, abs=1e-7)


def test_timestamps_are_checked_and_ignored_by_a_model_that_does_not_read_time(tiny_rec: Recommender) -> None:
    history = [100, 110, 120]
    plain = tiny_rec.recommend(history=history, k=5)
    assert not tiny_rec._model.uses_timestamps
    assert tiny_rec.recommend(history=history, k=5, timestamps=[1.0, 2.0, 3.0], at=4.0) == plain
    assert tiny_rec.recommend(user=11, k=5, at=4.0) == tiny_rec.recommend(user=11, k=5)
    with pytest.raises(InvalidRequestError, match="the history: 2 timestamps for 3 item ids; give one per item"):
        tiny_rec.recommend(history=history, timestamps=[1.0, 2.0])
    with pytest.raises(InvalidRequestError, match="timestamps must be finite numbers"):
        tiny_rec.recommend(history=history, timestamps=[1.0, float("nan"), 3.0])
    with pytest.raises(InvalidRequestError, match="at must be a finite number"):
        tiny_rec.recommend(history=history, at="tomorrow")
    with pytest.raises(InvalidRequestError, match="timestamps go with histories"):
        tiny_rec.recommend_batch(users=[11], timestamps=[[1.0]])
    with pytest.raises(InvalidRequestError, match="1 timestamp lists for 2 histories"):
        tiny_rec.recommend_batch(histories=[history, history], timestamps=[[1.0, 2.0, 3.0]])


def test_unknown_items_drop_their_timestamps_too(tiny_rec: Recommender) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownItemsWarning)
        # 999 is unknown: its timestamp goes with it, so the rest still match one to one (no error)
        recs = tiny_rec.recommend(history=[100, 999, 120], timestamps=[1.0, 2.0, 3.0], k=3)
    assert recs == tiny_rec.recommend(history=[100, 120], k=3)
    assert tiny_rec.known_positions([100, 999, 120]) == [0, 2]


def test_saved_histories_keep_their_timestamps(tiny_saved) -> None:
    import polars as pl

    from recsys.data import schema

    times = [[10 * i for i in range(len(items))] for items in tiny_saved.histories[schema.ITEMS].to_list()]
    saved = tiny_saved.__class__(**{**tiny_saved.__dict__, "histories": tiny_saved.histories.with_columns(
        pl.Series(schema.TIMESTAMPS, times, dtype=pl.List(pl.Int64)))})
    rec = Recommender.from_saved(saved)
    assert rec._history_times[1].tolist() == times[0]
    assert Recommender.from_saved(tiny_saved)._history_times == {}  # an older saved model: none, and it still works


def test_pyfunc_frames_carry_timestamps_and_at_per_row(tiny_rec: Recommender) -> None:
    import pandas as pd

    from recsys.retrieval.pyfunc import predict_frame

    frame = pd.DataFrame([{"items": [100, 110], "timestamps": [1.0, 2.0], "at": 3.0},
                          {"items": [120], "timestamps": None, "at": None},
                          {"user_id": 11, "at": 5.0}])
    out = predict_frame(tiny_rec, frame, default_k=2)
    assert out["query"].tolist() == [0, 0, 1, 1, 2, 2]
    expected = [r.item_id for r in tiny_rec.recommend(history=[100, 110], k=2)]
    assert out[out["query"] == 0]["item_id"].tolist() == expected
    bad = pd.DataFrame([{"items": [100, 110], "timestamps": [1.0]}])
    with pytest.raises(InvalidRequestError, match="1 timestamps for 2 item ids"):
        predict_frame(tiny_rec, bad)


def test_small_batches_encode_on_one_thread_and_leave_the_callers_setting(tiny_dir: Path) -> None:
    """A single query runs on one torch thread (steady p99 on shared cores); the caller's setting is restored."""
    from recsys.retrieval import recommender as module

    rec = Recommender.load(tiny_dir)
    seen: list[int] = []
    encode = rec._model.user_vector

    def spy(*args: object) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return encode(*args)

    rec._model.user_vector = spy  # type: ignore[method-assign]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rec.recommend(user=11, k=2)
        rec.recommend_batch(histories=[[100]] * module.SMALL_ENCODE, k=2)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
