"""Property-based: `Recommender.recommend` with arbitrary histories, users, k and allow/deny lists returns a
valid list or raises one of our documented errors, never anything else."""

from __future__ import annotations

import warnings

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recsys.errors import RecsysError
from recsys.retrieval import Recommender
from tests.retrieval.conftest import HISTORIES, ITEM_IDS, N_ITEMS, tiny_saved_model

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
REC = Recommender.from_saved(tiny_saved_model())

KNOWN = st.sampled_from(ITEM_IDS)
SCALAR = st.one_of(
    KNOWN, KNOWN.map(str), KNOWN.map(lambda i: f" {i} "), KNOWN.map(float),
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**63 - 1, -(2**63), 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.booleans(), st.none(),
)
ITEM = st.one_of(SCALAR, st.lists(SCALAR, max_size=2), st.dictionaries(st.text(max_size=3), SCALAR, max_size=1))
ITEMS = st.lists(ITEM, max_size=40)
BAD_K = st.one_of(st.integers(-3, N_ITEMS + 3), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3),
                  st.none(), st.booleans())


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """`usual` 3 times in 4, else `odd`: enough answerable requests to check the answers too."""
    return st.integers(0, 3).flatmap(lambda n: odd if n == 0 else usual)


K = mostly(st.integers(1, 5), BAD_K)
FILTER = mostly(st.none(), st.one_of(ITEMS, st.lists(KNOWN, max_size=N_ITEMS), st.text(max_size=5)))
ITEMS = mostly(st.lists(KNOWN, min_size=1, max_size=10), ITEMS)


def check(call, k: object, history: list | None, allow: object, deny: object, exclude_seen: bool) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # UnknownItemsWarning for skipped ids
            recs = call()
    except RecsysError as exc:
        assert str(exc) and "\n" not in str(exc)
        event(type(exc).__name__)
        return
    event("recommended")
    ids = [r.item_id for r in recs]
    assert len(ids) == k and len(set(ids)) == len(ids) and set(ids) <= set(ITEM_IDS)
    assert all(r.score == r.score for r in recs)  # no NaN scores
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    if isinstance(allow, list):
        assert set(ids) <= {REC._item_ids[i] for i in REC._known_idx(allow)}
    if isinstance(deny, list):
        assert not set(ids) & {REC._item_ids[i] for i in REC._known_idx(deny)}
    if exclude_seen and history is not None:
        assert not set(ids) & set(REC.split_known(history)[0]) - {True, False}


@SETTINGS
@given(history=ITEMS, k=K, allow=FILTER, deny=FILTER, exclude_seen=st.booleans(),
       on_unknown=mostly(st.sampled_from(["skip", "error"]), st.sampled_from(["ignore", "", "SKIP"])))
def test_recommend_for_any_history(history: list, k: object, allow: object, deny: object, exclude_seen: bool,
                                   on_unknown: str) -> None:
    check(lambda: REC.recommend(history=history, k=k, allow=allow, deny=deny, exclude_seen=exclude_seen,
                                on_unknown=on_unknown), k, history, allow, deny, exclude_seen)


@SETTINGS
@given(user=mostly(st.sampled_from(sorted(HISTORIES)), SCALAR), k=K, allow=FILTER, deny=FILTER,
       exclude_seen=st.booleans())
def test_recommend_for_any_user(user: object, k: object, allow: object, deny: object, exclude_seen: bool) -> None:
    history = HISTORIES.get(user) if isinstance(user, int) and not isinstance(user, bool) else None
    check(lambda: REC.recommend(user=user, k=k, allow=allow, deny=deny, exclude_seen=exclude_seen),
          k, history, allow, deny, exclude_seen)


@SETTINGS
@given(histories=st.lists(ITEMS, max_size=5), k=K)
def test_recommend_batch_for_any_histories(histories: list, k: object) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = REC.recommend_batch(histories=histories, k=k)
    except RecsysError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert len(results) == len(histories) and all(len(r) == k for r in results)
