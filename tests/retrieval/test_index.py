"""FAISS indexes: exact search equals brute force, approximate ones keep recall, saved indexes are verified."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError
from recsys.retrieval.index import (
    DENSE_CANDIDATES,
    IndexConfig,
    ItemIndex,
    index_paths,
    load_or_build,
    top_k_filtered,
    vectors_sha256,
)


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def torch_top_k(vectors: np.ndarray, queries: np.ndarray, k: int,
                filtered: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: full score matrix, filtered items set to -inf, torch.topk; returns item_idx (1-based)."""
    scores = torch.from_numpy(queries) @ torch.from_numpy(vectors).T  # [batch, n_items]
    for row, items in enumerate(filtered or []):
        scores[row, torch.as_tensor(items - 1, dtype=torch.long)] = -torch.inf
    top = torch.topk(scores, k, dim=1)
    return top.values.numpy(), top.indices.numpy() + 1


def test_flat_search_equals_brute_force_torch_topk() -> None:
    vectors, queries = random_vectors(2000, 32), random_vectors(50, 32, seed=1)
    scores, labels = ItemIndex.build(vectors).search(queries, 20)
    want_scores, want_labels = torch_top_k(vectors, queries, 20)
    np.testing.assert_array_equal(labels, want_labels)  # random floats: no ties
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


# At most `most` + most // 4 filtered items per query: within DENSE_CANDIDATES FAISS searches with oversampling,
# beyond it a matrix product scores every item; both must give the exact filtered top k.
@pytest.mark.parametrize("most", [(DENSE_CANDIDATES - 10) * 4 // 5, 300])
def test_filtered_search_is_exact_and_never_returns_filtered_items(most: int) -> None:
    vectors, queries = random_vectors(500, 16), random_vectors(40, 16, seed=2)
    rng = np.random.default_rng(3)
    # the best items of each query are filtered, so a plain top-k would come back short
    best = torch_top_k(vectors, queries, most)[1]
    filtered = [np.unique(np.concatenate([best[row, : rng.integers(0, most)], rng.integers(1, 501, most // 4)]))
                for row in range(len(queries))]
    scores, labels = top_k_filtered(ItemIndex.build(vectors), vectors, queries, 10, filtered)
    want_scores, want_labels = torch_top_k(vectors, queries, 10, filtered)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    for row, items in enumerate(filtered):
        assert not set(labels[row]) & set(items)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_indexes_reach_recall_095_with_default_params(kind: str) -> None:
    vectors, queries = random_vectors(5000, 32), random_vectors(200, 32, seed=4)
    exact = torch_top_k(vectors, queries, 10)[1]
    approx = ItemIndex.build(vectors, IndexConfig(kind=kind)).search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, f"{kind} recall@10 {recall:.3f}"


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_filtered_search_falls_back_to_exact_when_short(kind: str) -> None:
    vectors, queries = random_vectors(300, 8), random_vectors(4, 8, seed=5)
    filtered = [np.arange(1, 291)] * 4  # only 10 items left: approximate search alone would miss some
    config = IndexConfig(kind=kind, hnsw_ef_search=16, ivf_nprobe=1)
    labels = top_k_filtered(ItemIndex.build(vectors, config), vectors, queries, 10, filtered)[1]
    assert all(sorted(row) == list(range(291, 301)) for row in labels)


def test_index_is_saved_reused_and_rebuilt_when_deleted(tmp_path: Path) -> None:
    vectors = random_vectors(100, 8)
    first = load_or_build(tmp_path, vectors, IndexConfig(kind="hnsw"))
    index_file, meta_file = index_paths(tmp_path, "hnsw")
    meta = json.loads(meta_file.read_text())
    assert meta["kind"] == "hnsw" and meta["n_items"] == 100 and meta["dim"] == 8
    assert meta["params"] == {"M": 32, "efConstruction": 64}
    assert meta["vectors_sha256"] == vectors_sha256(vectors)
    assert not list(tmp_path.glob(".*.tmp"))  # temp files renamed or removed
    stamp = index_file.stat().st_mtime_ns
    again = load_or_build(tmp_path, vectors, IndexConfig(kind="hnsw", hnsw_ef_search=200))  # search param only
    assert index_file.stat().st_mtime_ns == stamp  # reused, not rewritten
    np.testing.assert_array_equal(again.search(vectors[:3], 5)[1], first.search(vectors[:3], 5)[1])
    index_file.unlink()
    load_or_build(tmp_path, vectors, IndexConfig(kind="hnsw"))
    assert index_file.is_file()


def test_index_is_rebuilt_for_other_vectors_or_build_params(tmp_path: Path) -> None:
    vectors = random_vectors(100, 8)
    load_or_build(tmp_path, vectors, IndexConfig(kind="ivf"))
    meta_file = index_paths(tmp_path, "ivf")[1]
    other = vectors.copy()
    other[0, 0] += 1.0  # retrained weights
    load_or_build(tmp_path, other, IndexConfig(kind="ivf"))
    assert json.loads(meta_file.read_text())["vectors_sha256"] == vectors_sha256(other)
    load_or_build(tmp_path, other, IndexConfig(kind="ivf", ivf_nlist=2))
    assert json.loads(meta_file.read_text())["params"] == {"nlist": 2}


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_index_file_is_rebuilt_with_a_warning(tmp_path: Path, damage: str) -> None:
    vectors = random_vectors(100, 8)
    load_or_build(tmp_path, vectors)
    index_file = index_paths(tmp_path, "flat")[0]
    data = bytearray(index_file.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # FAISS would read this without complaint: the checksum catches it
    index_file.write_bytes(bytes(data[: len(data) // 3]) if damage == "truncate"
                           else b"not an index" if damage == "garbage" else bytes(data))
    with pytest.warns(RuntimeWarning, match="index-flat.faiss.*rebuilding"):
        index = load_or_build(tmp_path, vectors)
    np.testing.assert_array_equal(index.search(vectors[:2], 3)[1], torch_top_k(vectors, vectors[:2], 3)[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_or_build(tmp_path, vectors)  # the rebuilt index was saved: no warning the second time


def test_unwritable_directory_keeps_the_index_in_memory(tmp_path: Path) -> None:
    vectors = random_vectors(50, 4)
    missing = tmp_path / "gone"  # cannot write into a folder that does not exist
    with pytest.warns(RuntimeWarning, match="kept in memory only"):
        index = load_or_build(missing, vectors)
    assert index.search(vectors[:1], 1)[1][0, 0] == torch_top_k(vectors, vectors[:1], 1)[1][0, 0]


def test_bad_index_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'annoy' is not one of flat, hnsw, ivf, ivfpq"):
        IndexConfig(kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hnsw_m must be at least 1, got 0"):
        IndexConfig(kind="hnsw", hnsw_m=0)
    with pytest.raises(ConfigError, match=r"pq_m \(5\) must divide the vector dimension \(8\)"):
        ItemIndex.build(random_vectors(100, 8), IndexConfig(kind="ivfpq", pq_m=5))


def test_ivfpq_scores_are_exact_inner_products_and_survive_a_reload(tmp_path: Path) -> None:
    """The refine stage re-scores candidates with the stored vectors, so the scores that reach users are the
    true inner products, not the 4-bit codes' estimates."""
    vectors, queries = random_vectors(3000, 16), random_vectors(20, 16, seed=6)
    built = load_or_build(tmp_path, vectors, IndexConfig(kind="ivfpq"))
    scores, labels = built.search(queries, 10)
    true = np.take_along_axis(queries @ vectors.T, labels - 1, axis=1)
    np.testing.assert_allclose(scores, true, rtol=1e-5, atol=1e-4)
    again = load_or_build(tmp_path, vectors, IndexConfig(kind="ivfpq"))
    np.testing.assert_array_equal(again.search(queries, 10)[1], labels)

