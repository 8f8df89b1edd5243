"""FAISS indexes over a model's item vectors: build, save beside the model, load, search with filtering.

The index holds rows 1..n_items of `item_vectors()` (row 0 is padding and is never indexed) and the FAISS id
of a vector is its item_idx, so search results need no translation. Scores are inner products, the same
`user_vector @ item_vectors().T` the model was trained and evaluated with.

Kinds:
    flat  IndexFlatIP: exact search, the default. Fast enough for catalogues up to ~10^5 items.
    hnsw  IndexHNSWFlat, METRIC_INNER_PRODUCT: graph search, no training, good recall at low latency.
    ivf   IndexIVFFlat, METRIC_INNER_PRODUCT: k-means cells, `nprobe` of them scanned per query.

On disk, in the model directory: `index-<kind>.faiss` and `index-<kind>.json` (kind, build params, n_items,
dim, the sha256 of the vectors it was built from and of the .faiss file itself). The model directory's
manifest is never touched: the index is a cache that `load_or_build` verifies through its JSON and rebuilds
when it is missing, was built from other vectors or with other build params, or is corrupt (a warning says
so). Files are written to a temporary name and renamed, so a reader never sees half an index. Search-time
params (efSearch, nprobe) are not build params: changing them never rebuilds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recsys.data.io import sha256_file
from recsys.durable import replacing, write_json
from recsys.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf", "ivfpq"]
KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
INDEX_FORMAT_VERSION = 1
SMALL_BATCH = 16  # fewer queries than this are searched on one thread (see ItemIndex._search)


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index to use and its parameters (only those of the chosen kind matter)."""

    kind: IndexKind = "flat"
    """flat (exact); hnsw, ivf or ivfpq (approximate). ivfpq: IVF cells scanned through 4-bit product-quantised
    codes (FAISS fast-scan), the best candidates re-scored exactly: the fastest for large catalogues."""
    hnsw_m: int = 32
    """HNSW: neighbours per node. More: better recall, more memory (about 8 * M bytes per item)."""
    hnsw_ef_construction: int = 64
    """HNSW: candidate list size while building. More: a better graph, a slower build."""
    hnsw_ef_search: int = 128
    """HNSW: candidate list size per query (at least the number of results asked for is used)."""
    ivf_nlist: int | None = None
    """IVF: number of k-means cells; None: about 4 * sqrt(n_items), at most n_items / 39 (FAISS's minimum
    of training points per cell)."""
    ivf_nprobe: int | None = None
    """IVF: cells scanned per query; None: half of nlist (at least 8), which keeps recall@10 >= 0.95 even on
    unclustered random vectors, the worst case for IVF. Real embeddings are clustered: set it lower
    (benchmarks/retrieval.py reaches 0.95 on 1M clustered vectors with a few percent of the cells)."""
    pq_m: int | None = None
    """ivfpq: sub-vectors per code (4 bits each); None: dim / 2 (two dimensions per 4-bit code) when dim is
    even, else dim. Must divide dim."""
    refine_k_factor: int = 64
    """ivfpq: candidates re-scored exactly per result asked for (k * refine_k_factor)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe", "pq_m",
                     "refine_k_factor"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"index parameter {name} must be at least 1, got {value}")

    def nlist_for(self, n_items: int) -> int:
        """The number of IVF cells for a catalogue of n_items."""
        if self.ivf_nlist is not None:
            return min(self.ivf_nlist, n_items)
        return max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))

    def nprobe_for(self, nlist: int) -> int:
        """The number of IVF cells scanned per query, for an index of nlist cells."""
        if self.ivf_nprobe is not None:
            return min(self.ivf_nprobe, nlist)
        return min(nlist, max(8, nlist // 2))

    def build_params(self, n_items: int) -> dict[str, Any]:
        """The parameters that shape the built index; a saved index with other values is rebuilt."""
        if self.kind == "hnsw":
            return {"M": self.hnsw_m, "efConstruction": self.hnsw_ef_construction}
        if self.kind == "ivf":
            return {"nlist": self.nlist_for(n_items)}
        if self.kind == "ivfpq":
            return {"nlist": self.nlist_for(n_items), "pq_m": self.pq_m}
        return {}

    def pq_m_for(self, dim: int) -> int:
        """Sub-vectors per product-quantisation code for vectors of `dim`."""
        m = self.pq_m if self.pq_m is not None else (dim // 2 if dim % 2 == 0 else dim)
        if dim % m != 0:
            raise ConfigError(f"index parameter pq_m ({m}) must divide the vector dimension ({dim})")
        return m


def as_index_config(index: str | IndexConfig) -> IndexConfig:
    """'flat' | 'hnsw' | 'ivf' | 'ivfpq' (default params) or an IndexConfig -> IndexConfig."""
    return index if isinstance(index, IndexConfig) else IndexConfig(kind=index)  # type: ignore[arg-type]


def vectors_sha256(vectors: np.ndarray) -> str:
    """Fingerprint of the item vectors (float32, C order) an index is built from."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()


class ItemIndex:
    """A FAISS index over item vectors [n_items, dim] whose ids are item_idx 1..n_items.

    `search` is exact for kind 'flat' and approximate otherwise; it is safe to call from several threads
    (FAISS searches do not mutate the index; search params are set once, in the constructor).
    """

    def __init__(self, index: Any, config: IndexConfig, n_items: int, dim: int) -> None:
        self.index = index
        self.config = config
        self.n_items = n_items
        self.dim = dim
        self._set_search_params()

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig = IndexConfig(), seed: int = 0) -> "ItemIndex":
        """Index `vectors` [n_items, dim] (row i is item_idx i + 1). IVF trains its k-means on them (seeded)."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] < 1:
            raise ValueError(f"vectors must be [n_items >= 1, dim], got shape {vectors.shape}")
        n_items, dim = vectors.shape
        ids = np.arange(1, n_items + 1, dtype=np.int64)
        if config.kind == "ivf":
            nlist = config.nlist_for(n_items)
            quantizer = faiss.IndexFlatIP(dim)
            ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.seed = seed
            ivf.train(vectors)
            ivf.add_with_ids(vectors, ids)  # IVF stores ids itself (the wrapper keeps the quantizer alive)
            index: Any = ivf
        elif config.kind == "ivfpq":
            spec = f"IVF{config.nlist_for(n_items)},PQ{config.pq_m_for(dim)}x4fs,RFlat"
            refined = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
            faiss.extract_index_ivf(refined).cp.seed = seed
            refined.train(vectors)
            index = faiss.IndexIDMap(refined)  # the refine stage keeps positions; the map turns them into item_idx
            index.add_with_ids(vectors, ids)
        else:
            if config.kind == "hnsw":
                base = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = config.hnsw_ef_construction
            else:
                base = faiss.IndexFlatIP(dim)
            index = faiss.IndexIDMap(base)  # flat and HNSW keep positions; the map turns them into item_idx
            index.add_with_ids(vectors, ids)
        return cls(index, config, n_items, dim)

    def _set_search_params(self) -> None:
        import faiss

        if self.config.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = self.config.hnsw_ef_search
        elif self.config.kind in ("ivf", "ivfpq"):
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = self.config.nprobe_for(ivf.nlist)
            if self.config.kind == "ivfpq":
                faiss.downcast_index(self.index.index).k_factor = self.config.refine_k_factor

    def search(self, queries: np.ndarray, n_candidates: int) -> tuple[np.ndarray, np.ndarray]:
        """Top `n_candidates` items per query by inner product: (scores [b, n], item_idx [b, n]).

        n_candidates is clipped to n_items. Approximate kinds may return fewer real results; missing slots
        have item_idx -1 and score -inf.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [batch, {self.dim}], got shape {queries.shape}")
        n = max(1, min(int(n_candidates), self.n_items))
        params = None
        if self.config.kind == "hnsw" and n > self.config.hnsw_ef_search:
            # HNSW returns at most efSearch results; per-call params leave the shared index untouched.
            import faiss

            params = faiss.SearchParametersHNSW(efSearch=n)
        scores, labels = self._search(queries, n, params)
        scores[labels < 0] = -np.inf
        return scores, labels

    def _search(self, queries: np.ndarray, n: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        threads = faiss.omp_get_max_threads()
        if len(queries) >= SMALL_BATCH or threads == 1:
            return self.index.search(queries, n, params=params)
        # A few queries gain nothing from OpenMP, and on a busy machine its barrier waits for a descheduled
        # thread: one query over 50k items took 24 ms with 2 threads and 0.5 ms with 1. The setting is per
        # calling thread (an OpenMP ICV), so concurrent searches do not disturb each other.
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(queries, n, params=params)
        finally:
            faiss.omp_set_num_threads(threads)

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, directory: str | Path, vectors_digest: str) -> Path:
        """Write `index-<kind>.faiss` and its `.json` into `directory`, each atomically; returns the JSON path.

        The .faiss file is renamed into place first and the JSON (which names the .faiss file's checksum)
        last, so a crash in between leaves a pair that `load_or_build` sees as stale and rebuilds.
        """
        import faiss

        directory = Path(directory)
        index_path, meta_path = index_paths(directory, self.config.kind)
        with replacing(index_path) as tmp:
            faiss.write_index(self.index, str(tmp))
            digest = sha256_file(tmp)
        meta = {
            "format_version": INDEX_FORMAT_VERSION,
            "kind": self.config.kind,
            "params": self.config.build_params(self.n_items),
            "n_items": self.n_items,
            "dim": self.dim,
            "vectors_sha256": vectors_digest,
            "index_sha256": digest,
            "faiss_version": faiss.__version__,
        }
        write_json(meta_path, meta)
        return meta_path

    @classmethod
    def load(cls, directory: str | Path, config: IndexConfig, vectors_digest: str, n_items: int,
             dim: int) -> "ItemIndex | None":
        """The saved index of `config.kind` if it matches these vectors and build params; None if it is
        missing or stale (nothing to warn about); ModelLoadError if it is there but corrupt."""
        import faiss

        index_path, meta_path = index_paths(Path(directory), config.kind)
        if not meta_path.is_file() or not index_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{meta_path}: unreadable index metadata ({exc})") from None
        expected = {"format_version": INDEX_FORMAT_VERSION, "kind": config.kind,
                    "params": config.build_params(n_items), "n_items": n_items, "dim": dim,
                    "vectors_sha256": vectors_digest}
        if not isinstance(meta, dict) or any(meta.get(key) != value for key, value in expected.items()):
            log.info("%s: built from other vectors or params; rebuilding", meta_path)
            return None
        if sha256_file(index_path) != meta.get("index_sha256"):
            raise ModelLoadError(f"{index_path}: checksum does not match {meta_path.name} (file changed or corrupt)")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise ModelLoadError(f"{index_path}: FAISS cannot read it ({str(exc).splitlines()[0]})") from None
        if index.ntotal != n_items or index.d != dim:
            raise ModelLoadError(f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, "
                                 f"expected {n_items} of dim {dim}")
        return cls(index, config, n_items, dim)


def load_or_build(directory: str | Path | None, vectors: np.ndarray, config: IndexConfig = IndexConfig(),
                  save: bool = True) -> ItemIndex:
    """The index of `config.kind` for `vectors` [n_items, dim]: loaded from `directory` when a matching one
    is saved there, else built (and saved there when `save`; a directory that cannot be written only warns).

    A corrupt saved index is rebuilt with a RuntimeWarning naming the file. Rebuilding needs only the
    vectors, so it is always possible; an index that cannot be saved is kept in memory only.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    digest = vectors_sha256(vectors)
    n_items, dim = vectors.shape
    if directory is not None:
        try:
            found = ItemIndex.load(directory, config, digest, n_items, dim)
        except ModelLoadError as exc:
            warnings.warn(f"{exc}; rebuilding the index", RuntimeWarning, stacklevel=2)
            found = None
        if found is not None:
            return found
    index = ItemIndex.build(vectors, config)
    if directory is not None and save:
        try:
            index.save(directory, digest)
        except OSError as exc:
            warnings.warn(f"{directory}: cannot save the {config.kind} index ({exc}); it is kept in memory only",
                          RuntimeWarning, stacklevel=2)
    return index


MASK_CELLS = 1 << 25  # rows x catalogue booleans per chunk of `top_k_filtered` (32 MB)
FILTER_GROUP = 256  # queries searched together by `top_k_filtered`
DENSE_CANDIDATES = 32  # a flat search for more candidates than this scores all items instead (_dense_top_k)


def top_k_filtered(index: ItemIndex, vectors: np.ndarray, queries: np.ndarray, k: int,
                   filtered: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Top k items per query leaving out each query's `filtered` item_idx: (scores [b, k], item_idx [b, k]).

    Oversampling: a query with f filtered items searches k + f candidates (the largest f of its group of
    queries with similar f), so k survive whatever the filter removes; for a flat index that is exact, and
    beyond DENSE_CANDIDATES candidates a flat search scores all `vectors` [n_items, dim] in one matrix product
    instead (same result, faster). An approximate index can still come back short (it may return fewer
    candidates than asked for): those queries are scored exactly against `vectors`. The caller makes sure
    that every query has at least k items left. Rows are ordered by score, best first.
    """
    n_items = index.n_items
    out_scores = np.empty((len(queries), k), dtype=np.float32)
    out_labels = np.empty((len(queries), k), dtype=np.int64)
    # Queries with similar filter sizes are searched together, so one user with a long history does not
    # make a whole batch ask for thousands of candidates.
    order = np.argsort([len(items) for items in filtered], kind="stable")
    step = max(1, min(FILTER_GROUP, MASK_CELLS // (n_items + 1)))
    for start in range(0, len(order), step):
        rows = order[start:start + step]
        # drop[r, i]: item_idx i must not be returned to query r; column 0 (padding, FAISS's -1) never is.
        drop = np.zeros((len(rows), n_items + 1), dtype=bool)
        drop[:, 0] = True
        for row, query in enumerate(rows):
            drop[row, filtered[query]] = True
        n_candidates = k + max(len(filtered[query]) for query in rows)
        if index.config.kind == "flat" and n_candidates > DENSE_CANDIDATES:
            out_scores[rows], out_labels[rows] = _dense_top_k(vectors, queries[rows], k, drop)
            continue
        scores, labels = index.search(queries[rows], n_candidates)
        labels = np.where(labels < 0, 0, labels)
        dropped = np.take_along_axis(drop, labels, axis=1)  # [rows, n_candidates]
        # The first k kept candidates of each row, in score order (a stable sort moves dropped ones last).
        first = np.argsort(dropped, axis=1, kind="stable")[:, :k]
        out_scores[rows] = np.take_along_axis(scores, first, axis=1)
        out_labels[rows] = np.take_along_axis(labels, first, axis=1)
        for row in np.flatnonzero(np.take_along_axis(dropped, first, axis=1).any(axis=1)):
            query = rows[row]
            out_scores[query], out_labels[query] = _exact_top_k(vectors, queries[query], k, drop[row])
    return out_scores, out_labels


def _dense_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k of each query by scoring every item in one matrix product: what IndexFlatIP computes, but
    it then selects k + f candidates with a heap per query, which costs more than the product once f runs
    past a few dozen (6,040 ml-1m users: 0.73 s in FAISS with every query oversampled, 0.06 s here)."""
    import torch

    scores = torch.from_numpy(queries) @ torch.from_numpy(vectors).T  # [rows, n_items]: column i is item_idx i + 1
    scores.masked_fill_(torch.from_numpy(drop[:, 1:]), float("-inf"))
    top_scores, top = torch.topk(scores, k, dim=1)  # best first; a partial selection, not a full sort
    return top_scores.numpy(), top.numpy() + 1


def _exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top k of one query over all items, leaving out `drop` [n_items + 1] (column 0 = padding)."""
    scores = vectors @ query  # [n_items], position i is item_idx i + 1
    scores[drop[1:]] = -np.inf
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return scores[top], top + 1


def index_paths(directory: Path, kind: str) -> tuple[Path, Path]:
    """(`index-<kind>.faiss`, `index-<kind>.json`) in `directory`."""
    return directory / f"index-{kind}.faiss", directory / f"index-{kind}.json"



