"""The ALS pool: exact, from the HNSW graph, and the graph's life in the API's holder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ann import AnnSettings, PoolIndex, exact_pool
from models.artifacts import ModelArtifact
from models.online import ModelHolder

K = 200


def factors(n: int, k: int = 16, seed: int = 3) -> np.ndarray:
    """Item factors with the shape ALS gives them: a few popular directions, norms that
    vary (popular items score high for many customers)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, k))
    f = centres[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, k))
    return (f * rng.lognormal(0.0, 0.4, (n, 1))).astype(np.float32)


def artifact(n: int, version: str = "v1") -> ModelArtifact:
    f = factors(n)
    return ModelArtifact(version=version, created_at=1.0, ref_ts=1.0,
                         params={"regularization": 0.05, "alpha": 4.0},
                         item_ids=[f"i{j}" for j in range(n)], item_factors=f,
                         similar_ids=np.zeros((n, 1), np.int32),
                         similar_scores=np.zeros((n, 1), np.float32),
                         consumable=np.zeros(n, bool))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 250), st.integers(0, 2**31))
def test_exact_pool_is_the_best_positive_scores(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = rng.integers(-3, 4, (n, 4)).astype(np.float32)  # small ints: ties at the cut
    vec = rng.integers(-2, 3, 4).astype(np.float32)
    rows, scores = exact_pool(f, vec, k)
    full = f @ vec
    assert list(rows) == sorted(rows) and len(set(rows.tolist())) == len(rows)
    assert len(rows) == min(k, int((full > 0).sum())) and (scores > 0).all()
    np.testing.assert_array_equal(scores, full[rows])
    best = np.sort(full)[::-1][:min(k, n)]
    # Every positive score among the k best is in the pool, up to ties at the cut.
    cut = best[-1]
    assert set(np.flatnonzero(full > max(cut, 0)).tolist()) <= set(rows.tolist())


@pytest.mark.parametrize(("kind", "at_least"), [("fp16", 0.98), ("hnsw", 0.9)])
def test_index_finds_most_of_the_exact_pool_with_exact_scores(kind: str, at_least: float,
                                                               ) -> None:
    f = factors(6_000)
    index = PoolIndex.build(f, AnnSettings(kind=kind, min_items=1))  # type: ignore[arg-type]
    rng = np.random.default_rng(9)
    found = []
    for _ in range(40):
        vec = f[rng.integers(0, len(f), 5)].mean(axis=0)  # a customer: a few items folded
        rows, scores = index.search(vec, K)
        exact, _ = exact_pool(f, vec, K)
        assert list(rows) == sorted(rows) and (scores > 0).all() and len(rows) <= K
        np.testing.assert_array_equal(scores, f[rows] @ vec)
        found.append(len(set(rows.tolist()) & set(exact.tolist())) / len(exact))
    assert np.mean(found) >= at_least, np.mean(found)


@pytest.mark.parametrize("kind", ["fp16", "hnsw"])
def test_index_of_a_small_catalog_gives_what_it_has(kind: str) -> None:
    f = factors(50)
    ann = AnnSettings(kind=kind, min_items=1)  # type: ignore[arg-type]
    rows, _ = PoolIndex.build(f, ann).search(f[0], K)
    exact, _ = exact_pool(f, f[0], K)
    assert set(rows.tolist()) == set(exact.tolist())


def test_holder_builds_the_graph_for_a_large_catalog_only() -> None:
    async def go() -> None:
        holder = ModelHolder(None, "t", AnnSettings(min_items=1_000))  # type: ignore[arg-type]
        small, large = artifact(999, "small"), artifact(3_000, "large")
        holder._index_later(small)
        await holder.index_ready()
        assert small.pool_index is None
        vec = large.item_factors[7]
        exact = large.pool(vec, K)
        holder._index_later(large)
        await holder.index_ready()
        assert large.pool_index is not None and large.pool_index.n_items == 3_000
        rows, _ = large.pool(vec, K)
        assert len(set(rows.tolist()) & set(exact[0].tolist())) >= 0.9 * len(exact[0])
        await holder.stop()

    asyncio.run(go())


def test_a_newer_model_cancels_the_older_build() -> None:
    async def go() -> None:
        holder = ModelHolder(None, "t", AnnSettings(min_items=1))  # type: ignore[arg-type]
        old, new = artifact(20_000, "old"), artifact(500, "new")
        holder._index_later(old)
        holder._index_later(new)
        await holder.index_ready()
        await asyncio.sleep(0)
        assert new.pool_index is not None
        assert old.pool_index is None  # its task was cancelled before it could attach
        await holder.stop()

    asyncio.run(go())


def test_search_keeps_faiss_to_one_thread_in_the_calling_thread() -> None:
    import threading

    import faiss

    f = factors(500)
    index = PoolIndex.build(f, AnnSettings(min_items=1))
    seen: list[int] = []

    def serve() -> None:  # a fresh thread starts with OpenMP's default (all cores)
        index.search(f[1], K)
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=serve)
    t.start()
    t.join()
    assert seen == [1]
