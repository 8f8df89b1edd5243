"""`Recommender`: next-item recommendations from a saved model, the public Python API.

    rec = Recommender.load("runs/.../model")                    # or runs:/<run_id>/model, models:/<name>/<version>
    rec.recommend(user=42, k=10)                                 # a known user: their saved history
    rec.recommend(history=[1, 260, 1196], k=10)                  # any sequence of original item ids, oldest first
    rec.recommend_batch(users=[1, 2, 3], k=10)                   # one list per user, same as one call each

With a history store (`Recommender.load(..., history_store=PATH)`, `use_history_store`), a user's history is
their saved one followed by their live events (`recsys.history_store`), and users only the store knows are known.

Results are lists of `Recommendation(item_id, title, score)`, best first: `item_id` is the original id,
`title` None where the item table has none, `score` the inner product `user_vector . item_vector`.

Repeat-aware models (`history_scores`: the repeat baselines, ACT-R) add a score to the items of the history
that is no inner product. With seen items included, retrieval is then two stages, and exact: FAISS finds
the best k items outside the model's input window (their score is the inner product alone), the window's
items are scored in full (inner product plus their history score), and the two lists are merged.

Filtering: seen items (the history) are excluded unless `exclude_seen=False` (None, the default: as the
model's config says, `evaluation.exclude_seen`, true unless it was trained for repeat consumption); `deny` items never appear;
`allow` restricts the results to those items (scored exactly). Asking for more results (k) than items are
left after filtering is an InvalidRequestError naming both numbers, never a silently short list.

Unknown item ids in a history are skipped with an `UnknownItemsWarning` listing them (`on_unknown="skip"`,
the default) or raise UnknownIdError (`on_unknown="error"`); a history left empty is an InvalidRequestError.
An unknown user is an UnknownIdError naming the id. Unknown ids in `allow`/`deny` are ignored: a deny list
written for a whole catalogue should not break on a smaller model.

The model always runs on the CPU unless `device` says otherwise, whatever device trained it; item vectors are
searched with FAISS (`recsys.retrieval.index`), exactly by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recsys.data import schema
from recsys.durable import folder_beside, publish_folder
from recsys.errors import InvalidRequestError, ModelLoadError, NotFittedError, RecsysError, UnknownIdError
from recsys.history_store import HistoryStore, user_key
from recsys.models.base import SequenceModel
from recsys.retrieval.index import IndexConfig, as_index_config, load_or_build, top_k_filtered
from recsys.saved_model import FORMAT_VERSION, SavedModel, build_saved_model, load_model_files, read_manifest

OnUnknown = Literal["skip", "error"]
# Users encoded at a time. Small enough that every intermediate tensor ([64, 200, 192] floats: 10 MB) stays
# under glibc's largest mmap threshold (32 MB): freed buffers are then reused from the heap instead of being
# mapped afresh and page-faulted in (256 users at a time were 25% slower over all ml-1m users); and batches of
# similar lengths pad less.
ENCODE_BATCH = 64
# Fewer histories than this are encoded on one torch thread (the calling thread's setting, restored after):
# a few rows gain nothing from intra-op threads, and on a shared machine their barrier waits for a descheduled
# thread. One ml-1m SASRec query: p99 1.0 ms on one thread, 0.8-80 ms on torch's default two (2 shared cores).
# Larger batches keep the process's setting (all 6,040 ml-1m users: 1.1 s on two threads, 1.75 s on one).
SMALL_ENCODE = 16
# Smaller batches run eagerly even when compiled: checking a compiled graph's guards and copying the input
# cost more than fusion saves on a few rows (one ml-1m user: p50 1.3 ms compiled vs 0.9 ms eager).
COMPILED_MIN_BATCH = 16
# Safe to serve from the download cache; models:/<name>/latest and @alias move, so they are fetched again.
_IMMUTABLE_URI = re.compile(r"^(runs:/[^/]+/.+|models:/[^/@]+/\d+)$")


class UnknownItemsWarning(UserWarning):
    """Item ids of a history that the model does not know, skipped (on_unknown="skip")."""


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """One recommended item."""

    item_id: Any
    """The original item id (the dtype of the training data)."""
    title: str | None
    """The item's title, None where the item table has none."""
    score: float
    """Inner product of the user vector and the item vector: higher is better; comparable within one call."""


class Recommender:
    """Recommendations from a saved model. Create it with `Recommender.load(...)` (or `from_saved`); an
    instance that was not loaded raises NotFittedError. Safe to call from several threads once loaded."""

    def __init__(self) -> None:
        self._loaded = False
        self.directory: Path | None = None
        self.model_name = ""
        self.format_version = FORMAT_VERSION
        self.n_items = 0
        self.n_users = 0
        self.compiled = False
        """Whether batches of COMPILED_MIN_BATCH or more histories are encoded compiled (load(...,
        compile=True) and torch.compile worked)."""
        self._user_vectors: np.ndarray | None = None  # [n_users + 1, hidden] once precompute_user_vectors ran
        self.history_store: HistoryStore | None = None
        """Where users' live events are read from (`use_history_store`); None: saved histories only."""

    # -- loading ------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path_or_uri: str | Path, index: str | IndexConfig = "flat", device: str = "cpu",
             tracking_uri: str | None = None, cache_dir: str | Path | None = None,
             save_index: bool = True, compile: bool = False,
             history_store: str | Path | HistoryStore | None = None) -> "Recommender":
        """Load a saved model: a directory, `runs:/<run_id>/<path>` or `models:/<name>/<version|alias>`.

        MLflow URIs are downloaded into `cache_dir` (default: $RECSYS_CACHE or ~/.cache/recsys, under
        `models/`) from `tracking_uri` (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db); a run
        artifact or numbered version already there is reused. The index of kind `index` is loaded from the
        model directory, or built and saved there (see `recsys.retrieval.index.load_or_build`).
        `compile=True` compiles the encoder with torch.compile (`recsys.retrieval.compiled`): a one-off 5-25 s
        at load for faster encoding of batches on a CPU (1.3-1.7x); smaller batches and single queries run
        eagerly anyway (COMPILED_MIN_BATCH). Worth it for a server or many users, not for one query.
        `history_store`: read users' live events from it (see `use_history_store`); a path must exist.
        Raises ModelLoadError for a missing, corrupt or incompatible model (or a failed download).
        """
        directory = resolve_model_dir(path_or_uri, tracking_uri=tracking_uri, cache_dir=cache_dir)
        manifest = read_manifest(directory)
        saved = load_model_files(directory)
        rec = cls.from_saved(saved, index=index, device=device, directory=directory, save_index=save_index,
                             compile=compile)
        rec.format_version = int(manifest["format_version"])
        if history_store is not None:
            rec.use_history_store(history_store)
        return rec

    def use_history_store(self, store: str | Path | HistoryStore | None) -> None:
        """Read users' live events from `store` (a HistoryStore, or the path of an existing one; None: stop).
        A user's history is then their saved history (if the model knows them) followed by their stored
        events (`recsys.history_store`), read at every request, so a user the model never saw is
        known once they have events; stored items this model does not know are left out. A precomputed
        vector is used only for a user with no stored events."""
        self._check_loaded()
        if store is not None and not isinstance(store, HistoryStore):
            store = HistoryStore(store, create=False)
        self.history_store = store

    @classmethod
    def from_saved(cls, saved: SavedModel, index: str | IndexConfig = "flat", device: str = "cpu",
                   directory: str | Path | None = None, save_index: bool = True,
                   compile: bool = False) -> "Recommender":
        """A Recommender over an in-memory SavedModel; the index is saved in `directory` if one is given;
        `compile` as in `load`."""
        cfg, model = build_saved_model(saved, directory or "saved model")
        rec = cls()
        rec._model = model.to(device).eval()
        rec._device = torch.device(device)
        rec._max_len = int(cfg.model.max_len)
        rec.directory = Path(directory) if directory is not None else None
        rec.model_name = saved.model_name
        rec.n_items = saved.n_items
        rec.n_users = saved.user_map.height
        rec.metrics = dict(saved.metrics)
        rec.exclude_seen_default = bool(cfg.evaluation.exclude_seen)
        """What `exclude_seen=None` means for this model: its config's evaluation.exclude_seen."""
        rec._repeat_aware = type(model).history_scores is not SequenceModel.history_scores
        rec._set_tables(saved)
        with torch.no_grad():
            # [n_items, hidden]: row i is item_idx i + 1 (row 0 of item_vectors() is padding, not indexed)
            rec._vectors = np.ascontiguousarray(model.item_vectors()[1:].detach().float().cpu().numpy())
        rec.index = load_or_build(rec.directory if save_index else None, rec._vectors, as_index_config(index))
        encoder = None
        if compile:
            from recsys.retrieval.compiled import compiled_user_vector

            encoder = compiled_user_vector(model, rec._max_len)  # None, with a warning, if torch.compile fails
        rec.compiled = encoder is not None
        rec._compiled_user_vector = encoder
        rec._loaded = True
        return rec

    def _set_tables(self, saved: SavedModel) -> None:
        item_ids = saved.item_map.sort(schema.ITEM_IDX)
        self._item_ids: list[Any] = [None, *item_ids[schema.ITEM_ID].to_list()]  # position = item_idx
        self._item_idx = dict(zip(item_ids[schema.ITEM_ID].to_list(), item_ids[schema.ITEM_IDX].to_list()))
        self._items_numeric = item_ids[schema.ITEM_ID].dtype.is_numeric()
        self._titles: list[str | None] = [None] * (self.n_items + 1)
        if schema.TITLE in saved.items.columns and schema.ITEM_IDX in saved.items.columns:
            for idx, title in saved.items.select(schema.ITEM_IDX, schema.TITLE).iter_rows():
                if idx is not None and 0 < idx <= self.n_items:
                    self._titles[idx] = title
        self._items_table = saved.items
        users = saved.user_map
        self._user_idx = dict(zip(users[schema.USER_ID].to_list(), users[schema.USER_IDX].to_list()))
        self._users_numeric = users[schema.USER_ID].dtype.is_numeric()
        self._histories: dict[int, np.ndarray] = {
            int(idx): np.asarray(items, dtype=np.int64)
            for idx, items in saved.histories.select(schema.USER_IDX, schema.ITEMS).iter_rows()
        }
        # Saved models from before timestamps were kept have none: a known user is then encoded without them.
        self._history_times: dict[int, np.ndarray] = {}
        if schema.TIMESTAMPS in saved.histories.columns:
            self._history_times = {
                int(idx): np.asarray(times, dtype=np.float64)
                for idx, times in saved.histories.select(schema.USER_IDX, schema.TIMESTAMPS).iter_rows()
            }

    # -- recommending --------------------------------------------------------------------------------------

    def recommend(self, user: Any = None, history: Sequence[Any] | None = None, k: int = 10,
                  exclude_seen: bool | None = None, allow: Iterable[Any] | None = None, deny: Iterable[Any] | None = None,
                  on_unknown: OnUnknown = "skip", timestamps: Sequence[float] | None = None,
                  at: float | None = None) -> list[Recommendation]:
        """Top k items for a known `user` (original id) or for a `history` of original item ids, oldest first.

        Exactly one of user/history. Best first. For models that read time (`uses_timestamps`): `timestamps`
        (seconds, one per history item; a known user's come from the saved model) and `at`, when the
        recommendation is asked for (None: no time context, as at the last interaction); other models accept
        and ignore both. Errors: NotFittedError before load; UnknownIdError for an unknown user (or an unknown
        item with on_unknown="error"); InvalidRequestError for k < 1, an empty history, timestamps that do not
        match the history, or k larger than the number of items left after filtering.
        """
        if (user is None) == (history is None):
            raise InvalidRequestError("pass exactly one of user=... or history=[...]")
        if user is not None:
            return self._batch([user], None, k, exclude_seen, allow, deny, on_unknown, None, at)[0]
        return self._batch(None, [history], k, exclude_seen, allow, deny, on_unknown,
                           None if timestamps is None else [timestamps], at)[0]

    def recommend_batch(self, users: Sequence[Any] | None = None, histories: Sequence[Sequence[Any]] | None = None,
                        k: int = 10, exclude_seen: bool | None = None, allow: Iterable[Any] | None = None,
                        deny: Iterable[Any] | None = None, on_unknown: OnUnknown = "skip",
                        timestamps: Sequence[Sequence[float]] | None = None,
                        at: float | Sequence[float] | None = None) -> list[list[Recommendation]]:
        """`recommend` for many users or many histories at once: one result list per input, in input order,
        equal to calling `recommend` for each (but encoded and searched in batches). `timestamps`: one list
        per history; `at`: one time for all, or one per input."""
        return self._batch(users, histories, k, exclude_seen, allow, deny, on_unknown, timestamps, at)

    def _batch(self, users: Sequence[Any] | None, histories: Sequence[Sequence[Any]] | None, k: int,
               exclude_seen: bool | None, allow: Iterable[Any] | None, deny: Iterable[Any] | None,
               on_unknown: OnUnknown, timestamps: Sequence[Sequence[float]] | None,
               at: float | Sequence[float] | None) -> list[list[Recommendation]]:
        """Both public methods, which call it directly: the warning's stacklevel 3 names their caller."""
        self._check_loaded()
        if (users is None) == (histories is None):
            raise InvalidRequestError("pass exactly one of users=[...] or histories=[[...], ...]")
        exclude_seen = self.exclude_seen_default if exclude_seen is None else bool(exclude_seen)
        _check_k(k)
        if on_unknown not in ("skip", "error"):
            raise InvalidRequestError(f"on_unknown must be 'skip' or 'error', got {on_unknown!r}")
        n = len(users) if users is not None else len(histories or [])
        ats = _query_times(at, n)
        queries = None
        times: list[np.ndarray | None]
        if users is not None:
            if timestamps is not None:
                raise InvalidRequestError("timestamps go with histories; a known user's come from the saved model")
            names = [f"user {user!r}" for user in users]
            if self.history_store is None:
                indices = [self._user_index(user) for user in users]
                sequences = [self._history_of(user) for user in users]
                times = [self._history_times.get(idx) for idx in indices]
                live: list[int] = []
            else:
                indices, sequences, times, live = self._live_histories(self.history_store, users)
            if self._user_vectors is not None and len(users) and (ats is None or not self._model.uses_timestamps):
                queries = self._user_vectors[indices]  # a copy; row 0 (zeros) for users only the store knows
                if live:  # their precomputed vector predates their events: encode them afresh
                    queries[live] = self._encode([sequences[row] for row in live], [times[row] for row in live],
                                                 None if ats is None else ats[live])
        else:
            rows = list(histories or [])
            if timestamps is not None and len(timestamps) != len(rows):
                raise InvalidRequestError(f"{len(timestamps)} timestamp lists for {len(rows)} histories; give one per history")
            names = [f"history {row}" if len(rows) > 1 else "the history" for row in range(len(rows))]
            sequences, times = [], []
            for row, (items, name) in enumerate(zip(rows, names)):
                row_times = None if timestamps is None else _timestamps(timestamps[row], items, name)
                known, unknown, kept = self._map_history(items, on_unknown, name)
                if unknown:
                    warnings.warn(f"{name}: skipped {len(unknown)} unknown item ids: {_preview(unknown)}",
                                  UnknownItemsWarning, stacklevel=3)
                sequences.append(known)
                times.append(None if row_times is None else row_times[kept])
        return self._rank(sequences, names, k, exclude_seen, allow, deny, queries, times, ats)

    def precompute_user_vectors(self) -> None:
        """Encode every known user's saved history once and keep the vectors [n_users, hidden] in memory
        (4 bytes x hidden per user), so that `recommend(user=...)` only searches. Histories in a model
        directory never change, so the vectors stay valid for the Recommender's life; a user with events in
        the history store (`use_history_store`) is encoded afresh instead, at every request."""
        self._check_loaded()
        users = sorted(self._histories)
        vectors = np.zeros((max(self._user_idx.values(), default=0) + 1, self._vectors.shape[1]), dtype=np.float32)
        if users:
            vectors[users] = self._encode([self._histories[idx] for idx in users])
        self._user_vectors = vectors

    def split_known(self, item_ids: Iterable[Any]) -> tuple[list[Any], list[Any]]:
        """(known, unknown) original item ids, each in input order: what on_unknown="skip" keeps and drops."""
        self._check_loaded()
        known, unknown = [], []
        for item in item_ids:
            (known if self._lookup_item(item) is not None else unknown).append(item)
        return known, unknown

    def known_positions(self, item_ids: Sequence[Any]) -> list[int]:
        """Positions of the known ids in `item_ids`: what on_unknown="skip" keeps (to keep timestamps aligned)."""
        self._check_loaded()
        return [position for position, item in enumerate(item_ids) if self._lookup_item(item) is not None]

    def history(self, user: Any) -> list[Any]:
        """A known user's history as original item ids, oldest first: the saved one, followed by their stored
        events when a history store is in use; UnknownIdError for a user neither knows."""
        self._check_loaded()
        if self.history_store is None:
            return [self._item_ids[idx] for idx in self._history_of(user)]
        _, (sequence,), _, _ = self._live_histories(self.history_store, [user])
        return [self._item_ids[idx] for idx in sequence]

    def known_item_id(self, item_id: Any) -> Any:
        """The catalogue's own spelling of `item_id` (42 for "42" in an integer catalogue), None if unknown."""
        self._check_loaded()
        idx = self._lookup_item(item_id)
        return None if idx is None else self._item_ids[idx]

    def item(self, item_id: Any) -> dict[str, Any]:
        """The item table's row for an original item id (item_id, title, year, genres, ...); UnknownIdError."""
        self._check_loaded()
        idx = self._lookup_item(item_id)
        if idx is None:
            raise UnknownIdError(f"item_id {item_id!r} is not in the model's catalogue ({self.n_items} items)")
        rows = self._items_table.filter(self._items_table[schema.ITEM_IDX] == idx).to_dicts()
        row = rows[0] if rows else {}
        return {"item_id": self._item_ids[idx], **{k: v for k, v in row.items() if k != schema.ITEM_IDX}}

    @property
    def max_len(self) -> int:
        """The most history items the model reads (its config's model.max_len): older ones are cut off."""
        self._check_loaded()
        return self._max_len

    @property
    def index_kind(self) -> str:
        """The FAISS index kind in use: flat, hnsw or ivf."""
        self._check_loaded()
        return self.index.config.kind

    # -- internals ------------------------------------------------------------------------------------------

    def _rank(self, sequences: list[np.ndarray], names: list[str], k: int, exclude_seen: bool,
              allow: Iterable[Any] | None, deny: Iterable[Any] | None, queries: np.ndarray | None = None,
              times: list[np.ndarray | None] | None = None,
              ats: np.ndarray | None = None) -> list[list[Recommendation]]:
        if not sequences:
            return []
        deny_idx = self._known_idx(deny) if deny is not None else np.empty(0, dtype=np.int64)
        # Item ids to leave out, per query; may repeat ids (a history can hold an item twice), which the
        # filters below do not mind. Merging with the deny list only when there is one saves a sort per user.
        terms = None if exclude_seen or not self._repeat_aware else self._history_terms(sequences, times, ats)
        if not exclude_seen:
            filtered = [deny_idx] * len(sequences)
        elif len(deny_idx):
            filtered = [np.concatenate([seq, deny_idx]) for seq in sequences]
        else:
            filtered = sequences
        if queries is None:
            queries = self._encode(sequences, times, ats)  # [batch, hidden]
        if allow is not None:
            scores, labels = self._rank_allowed(queries, filtered, names, k, self._known_idx(allow))
            if terms is not None:
                scores, labels = self._with_history(queries, scores, labels, terms, deny_idx, k,
                                                    self._known_idx(allow))
        else:
            for items, name in zip(filtered, names):
                if k > self.n_items - len(items):  # only then count the distinct ids exactly
                    _check_left(k, self.n_items - len(np.unique(items)), name, "of the catalogue")
            if terms is None:
                scores, labels = top_k_filtered(self.index, self._vectors, queries, k, filtered)
            else:
                scores, labels = self._two_stage(queries, terms, deny_idx, k)
        item_ids, titles = self._item_ids, self._titles
        # tolist() turns the arrays into Python numbers in one call instead of one numpy scalar at a time
        return [[Recommendation(item_ids[idx], titles[idx], score) for score, idx in zip(row_scores, row_labels)]
                for row_scores, row_labels in zip(scores.tolist(), labels.tolist())]

    def _history_terms(self, sequences: list[np.ndarray], times: list[np.ndarray | None] | None,
                       ats: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (item_idx of the model's input window, distinct; their history scores)."""
        from recsys.data.batches import left_pad

        out: list[tuple[np.ndarray, np.ndarray]] = []
        with torch.inference_mode():
            for start in range(0, len(sequences), ENCODE_BATCH):
                rows = list(range(start, min(start + ENCODE_BATCH, len(sequences))))
                length = min(self._max_len, max(len(sequences[row]) for row in rows))
                items = left_pad([sequences[row] for row in rows], length)
                history_times = None
                if times is not None and all(times[row] is not None for row in rows):
                    history_times = left_pad([np.asarray(times[row]) for row in rows], length)
                at = None if ats is None else torch.as_tensor(ats[rows])
                terms = self._model.history_scores(items.to(self._device), None if history_times is None
                                                   else history_times.to(self._device),
                                                   None if at is None else at.to(self._device))
                for item_row, term_row in zip(items.numpy(), terms.float().cpu().numpy()):
                    idx, first = np.unique(item_row, return_index=True)
                    keep = idx > 0
                    out.append((idx[keep], term_row[first[keep]]))
        return out

    def _two_stage(self, queries: np.ndarray, terms: list[tuple[np.ndarray, np.ndarray]], deny_idx: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k of a repeat-aware model with seen items included: FAISS over the items outside each
        window (and the deny list), then the window's items scored in full and merged in."""
        filtered = [np.concatenate([window, deny_idx]) for window, _ in terms]
        left = min(self.n_items - len(np.unique(f)) for f in filtered)
        if left >= k:
            scores, labels = top_k_filtered(self.index, self._vectors, queries, k, filtered)
        elif left > 0:  # a tiny catalogue: a query may have fewer than k items outside its window
            scores, labels = _dense_rows(self._vectors, queries, filtered, min(k, left))
        else:
            scores = np.empty((len(queries), 0), dtype=np.float32)
            labels = np.empty((len(queries), 0), dtype=np.int64)
        return self._with_history(queries, scores, labels, terms, deny_idx, k, None)

    def _with_history(self, queries: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                      terms: list[tuple[np.ndarray, np.ndarray]], deny_idx: np.ndarray, k: int,
                      allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top k of its candidates (labels) and its window's items at their full scores."""
        out_scores = np.empty((len(queries), k), dtype=np.float32)
        out_labels = np.empty((len(queries), k), dtype=np.int64)
        for row, (window, extra) in enumerate(terms):
            keep = ~np.isin(window, deny_idx)
            if allowed is not None:
                keep &= np.isin(window, allowed)
            window, extra = window[keep], extra[keep]
            full = self._vectors[window - 1] @ queries[row] + extra  # [window]
            outside = ~np.isin(labels[row], window)  # an allow-list ranking scored the window items already
            items = np.concatenate([labels[row][outside], window])
            values = np.concatenate([scores[row][outside], full]).astype(np.float32)
            top = np.argsort(-values, kind="stable")[:k]
            out_scores[row], out_labels[row] = values[top], items[top]
        return out_scores, out_labels

    def _rank_allowed(self, queries: np.ndarray, filtered: list[np.ndarray], names: list[str], k: int,
                      allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k among the allowed items (an allow list is small: scoring it beats oversampling)."""
        scores = queries @ self._vectors[allowed - 1].T  # [batch, n_allowed]
        for row, (items, name) in enumerate(zip(filtered, names)):
            out = np.isin(allowed, items)
            _check_left(k, len(allowed) - int(out.sum()), name, "of the allow list")
            scores[row, out] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1), allowed[top]

    def _encode(self, sequences: list[np.ndarray], times: list[np.ndarray | None] | None = None,
                ats: np.ndarray | None = None) -> np.ndarray:
        """User vectors [batch, hidden]. Users are encoded in batches of similar length, each padded only to
        its longest history: SASRec's states do not depend on the amount of left padding, and short
        batches cost far less attention. A model that reads time gets the histories' timestamps (a batch
        where any is missing goes without) and the query times."""
        from recsys.data.batches import left_pad

        timed = self._model.uses_timestamps
        out = np.empty((len(sequences), self._vectors.shape[1]), dtype=np.float32)
        order = np.argsort([len(seq) for seq in sequences], kind="stable")
        with torch.inference_mode(), _threads(1 if len(sequences) < SMALL_ENCODE else None):
            for start in range(0, len(order), ENCODE_BATCH):
                rows = order[start:start + ENCODE_BATCH]
                length = min(self._max_len, max(len(sequences[row]) for row in rows))
                items = left_pad([sequences[row] for row in rows], length).to(self._device)
                if timed:
                    out[rows] = self._encode_timed(items, rows, length, times, ats)
                    continue
                encoder = self._model.user_vector
                if self._compiled_user_vector is not None and len(rows) >= COMPILED_MIN_BATCH:
                    encoder = self._compiled_user_vector
                out[rows] = encoder(items).float().cpu().numpy()
        return out

    def _encode_timed(self, items: torch.Tensor, rows: np.ndarray, length: int,
                      times: list[np.ndarray | None] | None, ats: np.ndarray | None) -> np.ndarray:
        """One batch of `_encode` for a model that reads time (eager: the compiled encoder takes items only)."""
        from recsys.data.batches import left_pad

        history_times = None
        if times is not None and all(times[row] is not None for row in rows):
            history_times = left_pad([np.asarray(times[row]) for row in rows], length).to(self._device)
        if ats is not None and history_times is None:
            # The time context is the gap from each history item to `at`: without the items' times there is
            # none, and answering as if `at` were not given would be silently another question.
            raise InvalidRequestError("at needs the history's timestamps (one per item): a time-aware model "
                                      "measures the gaps from them to at; give timestamps or leave at out")
        at = None if ats is None else torch.as_tensor(ats[rows], device=self._device)
        return self._model.user_vector(items, history_times, at).float().cpu().numpy()

    def _user_index(self, user: Any) -> int:
        try:
            idx = self._user_idx.get(_coerce(user, self._users_numeric)) if not isinstance(user, bool) else None
        except TypeError:  # unhashable, e.g. a list
            idx = None
        if idx is None:
            raise UnknownIdError(f"user_id {user!r} is not a known user of this model ({self.n_users} users)")
        return int(idx)

    def _live_histories(self, store: HistoryStore, users: Sequence[Any]) -> tuple[
            list[int], list[np.ndarray], list[np.ndarray | None], list[int]]:
        """(user_idx, 0 for users only the store knows; history item_idx; their timestamps or None; the rows
        with stored events) of `users`: the saved history followed by the events in `store`."""
        keys = [self._store_key(user) for user in users]
        stored = store.recent(keys)
        indices, sequences, times, live = [], [], [], []
        for row, (user, key) in enumerate(zip(users, keys)):
            idx = self._user_idx_or_none(user)
            events = stored.get(key)
            if idx is None and events is None:
                raise UnknownIdError(f"user_id {user!r} is neither a user of this model ({self.n_users} users) nor "
                                     f"in the history store {store.path}")
            saved = self._histories.get(idx, np.empty(0, dtype=np.int64)) if idx is not None else np.empty(0, np.int64)
            saved_times = self._history_times.get(idx) if idx is not None else np.empty(0)
            new, new_times = self._known_events(events)
            if len(saved) + len(new) == 0:
                why = f" and none of their {len(events.items)} stored events is an item of this model" if events else ""
                raise InvalidRequestError(f"history is empty: user_id {user!r} has no saved history{why}")
            indices.append(idx or 0)
            sequences.append(np.concatenate([saved, new]) if len(new) else saved)
            # a saved history without times (older model files) leaves the whole history without them
            times.append(None if saved_times is None and len(saved) else
                         np.concatenate([saved_times if saved_times is not None else np.empty(0), new_times]))
            if len(new):
                live.append(row)
        return indices, sequences, times, live

    def _known_events(self, events: Any) -> tuple[np.ndarray, np.ndarray]:
        """(item_idx, timestamps) of the stored events whose items this model knows."""
        if events is None:
            return np.empty(0, dtype=np.int64), np.empty(0)
        mapped = [self._lookup_item(item) for item in events.items]
        keep = [pos for pos, idx in enumerate(mapped) if idx is not None]
        return (np.asarray([mapped[pos] for pos in keep], dtype=np.int64),
                np.asarray([events.timestamps[pos] for pos in keep], dtype=np.float64))

    @staticmethod
    def _store_key(user: Any) -> str:
        try:
            return user_key(user)
        except RecsysError:
            raise UnknownIdError(f"user_id {user!r} is not a user id (an integer or a string)") from None

    def _user_idx_or_none(self, user: Any) -> int | None:
        try:
            return self._user_index(user)
        except UnknownIdError:
            return None

    def _history_of(self, user: Any) -> np.ndarray:
        history = self._histories.get(self._user_index(user))
        if history is None or len(history) == 0:
            raise InvalidRequestError(f"history is empty: user_id {user!r} has no saved history")
        return history

    def _map_history(self, items: Sequence[Any], on_unknown: OnUnknown,
                     name: str) -> tuple[np.ndarray, list[Any], np.ndarray]:
        """(item_idx of the known items, unknown original ids, the known items' positions in `items`); raises
        as on_unknown and emptiness say."""
        if isinstance(items, (str, bytes)):
            raise InvalidRequestError(f"{name}: expected a list of item ids, got the string {items!r}")
        mapped = [self._lookup_item(item) for item in items]
        unknown = [item for item, idx in zip(items, mapped) if idx is None]
        if unknown and on_unknown == "error":
            raise UnknownIdError(f"{name}: unknown item ids {_preview(unknown)} ({self.n_items} items known)")
        known = np.asarray([idx for idx in mapped if idx is not None], dtype=np.int64)
        if len(known) == 0:
            skipped = f" after skipping {len(unknown)} unknown item ids {_preview(unknown)}" if unknown else ""
            raise InvalidRequestError(f"history is empty{skipped}: {name} needs at least one known item id")
        return known, unknown, np.asarray([pos for pos, idx in enumerate(mapped) if idx is not None], dtype=np.int64)

    def _lookup_item(self, item: Any) -> int | None:
        if isinstance(item, bool):  # True == 1 in a dict lookup; a flag is never an item id
            return None
        try:
            return self._item_idx.get(_coerce(item, self._items_numeric))
        except TypeError:  # unhashable, e.g. a nested list
            return None

    def _known_idx(self, item_ids: Iterable[Any]) -> np.ndarray:
        if isinstance(item_ids, (str, bytes)):
            raise InvalidRequestError(f"allow/deny must be lists of item ids, got the string {item_ids!r}")
        found = (self._lookup_item(item) for item in item_ids)
        return np.unique(np.asarray([idx for idx in found if idx is not None], dtype=np.int64))

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise NotFittedError("this Recommender holds no model: create it with Recommender.load(path_or_uri)")

    def __repr__(self) -> str:
        if not self._loaded:
            return "Recommender(not loaded)"
        return (f"Recommender({self.model_name}, {self.n_items} items, {self.n_users} users, "
                f"index={self.index.config.kind}, directory={self.directory})")


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads for the calling thread set to `n` (None: unchanged) inside the block. The
    setting is per calling thread (an OpenMP ICV), so concurrent callers do not disturb each other."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _dense_rows(vectors: np.ndarray, queries: np.ndarray, filtered: list[np.ndarray],
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k per query over all `vectors` (item_idx 1..n) without each query's `filtered` items."""
    scores = queries @ vectors.T  # [batch, n_items]
    for row, items in enumerate(filtered):
        scores[row, items[items > 0] - 1] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), top + 1


def _timestamps(values: Any, items: Sequence[Any], name: str) -> np.ndarray:
    """One history's timestamps as float seconds, one per item; InvalidRequestError naming the history."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidRequestError(f"{name}: timestamps must be a list of numbers (seconds), got {values!r:.60}")
    values = list(values)
    if len(values) != len(items):
        raise InvalidRequestError(f"{name}: {len(values)} timestamps for {len(items)} item ids; give one per item")
    if not all(_is_time(v) for v in values):
        bad = next(v for v in values if not _is_time(v))
        raise InvalidRequestError(f"{name}: timestamps must be finite numbers (seconds), got {bad!r}")
    return np.asarray(values, dtype=np.float64)


def _query_times(at: Any, n: int) -> np.ndarray | None:
    """`at` as one query time per input ([n] float seconds), or None for no time context."""
    if at is None:
        return None
    values = [at] * n if _is_time(at) else list(at) if isinstance(at, Sequence) and not isinstance(at, str) else None
    if values is None or len(values) != n or not all(_is_time(v) for v in values):
        raise InvalidRequestError(f"at must be a finite number of seconds (or one per input), got {at!r:.60}")
    return np.asarray(values, dtype=np.float64)


def _is_time(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidRequestError(f"k must be a positive integer, got {k!r}")
    if k < 1:
        raise InvalidRequestError(f"k must be at least 1, got {k}")


def _check_left(k: int, left: int, name: str, where: str) -> None:
    if k > left:
        raise InvalidRequestError(f"k={k} but only {left} items {where} are left for {name} after filtering "
                                  "(seen items and the deny list); ask for fewer")


def _coerce(value: Any, numeric: bool) -> Any:
    """Match the id map's dtype: '42' finds item 42 in an integer map (ids typed on a command line or in a
    URL) and 42 finds '42' in a string map."""
    if numeric and isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    if not numeric and isinstance(value, (int, np.integer)):
        return str(value)
    return value


def _preview(values: list[Any], limit: int = 10) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


# -- MLflow URIs ------------------------------------------------------------------------------------------------


def resolve_model_dir(path_or_uri: str | Path, tracking_uri: str | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """A local model directory for a path, `runs:/...` or `models:/...` URI (downloaded into the cache)."""
    text = str(path_or_uri)
    if not text.startswith(("runs:/", "models:/")):
        return Path(path_or_uri).expanduser()
    from recsys.data.prepare import cache_root
    from recsys.training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "models"
    target = root / hashlib.sha256(f"{uri}|{text}".encode()).hexdigest()[:20]
    if _IMMUTABLE_URI.match(text) and (target / "manifest.json").is_file():
        return target
    with folder_beside(target) as tmp:
        found = _download(text, uri, tmp)
        try:  # a moved alias (models:/name@alias) replaces its old copy
            publish_folder(found, target, replace=True)
        except OSError:
            if not (target / "manifest.json").is_file():  # another process may have just put it there
                raise
    return target


def _download(uri: str, tracking_uri: str, into: Path) -> Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        # models:/ goes through a client bound to this store: MLflow would otherwise ask the global registry
        source = _registry_source(uri, tracking_uri) if uri.startswith("models:/") else uri
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into),
                                                         tracking_uri=tracking_uri))
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{uri}: cannot download it from MLflow at {tracking_uri} ({first[:300]})") from None
    # the model directory itself, a folder holding it, or a logged pyfunc (its artifacts/<folder>)
    for candidate in _folders(local, local / "artifacts"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ModelLoadError(f"{uri}: the MLflow artifact at {tracking_uri} is not a recsys model directory "
                         "(no manifest.json); point at the logged model folder, e.g. runs:/<run_id>/model")


def _folders(local: Path, *inner: Path) -> list[Path]:
    """`local`, its sub-folders, and the sub-folders of each of `inner` that exists."""
    if not local.is_dir():
        return []
    found = [local]
    for folder in (local, *inner):
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if p.is_dir()))
    return found


def _registry_source(uri: str, tracking_uri: str) -> str:
    """The artifact URI behind `models:/<name>/<version>`, `models:/<name>/latest` or `models:/<name>@<alias>`."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif "/" in ref:
        name, version = ref.split("/", 1)
        if version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise MlflowException(f"registered model {name!r} has no versions")
            version = str(max(int(v.version) for v in versions))
    else:
        raise MlflowException(f"expected models:/<name>/<version> or models:/<name>@<alias>, got {uri}")
    return str(client.get_model_version_download_uri(name, version))
