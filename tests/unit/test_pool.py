"""The ALS pool: every item scored, by norm order, and the order's life in the holder."""

from __future__ import annotations

import asyncio

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.artifacts import ModelArtifact
from models.online import ModelHolder
from models.pool import NormOrder, exact_pool

K = 200


def factors(n: int, k: int = 16, seed: int = 3, spread: float = 2.0) -> np.ndarray:
    """Item factors shaped like ALS's: a few popular directions, and norms spread over
    orders of magnitude (regularisation shrinks rarely seen items towards zero)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, k))
    f = centres[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, k))
    return (f * rng.lognormal(0.0, spread, (n, 1))).astype(np.float32)


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
    cut = np.sort(full)[::-1][:min(k, n)][-1]
    # Every positive score above the cut is in; ties at it by lowest row.
    assert set(np.flatnonzero(full > max(cut, 0)).tolist()) <= set(rows.tolist())
    tied = np.flatnonzero(full == cut)
    if cut > 0:
        taken = [r for r in rows.tolist() if full[r] == cut]
        assert taken == sorted(tied.tolist())[:len(taken)]


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 400), st.integers(1, 250), st.integers(1, 64),
       st.integers(0, 2**31), st.booleans())
def test_norm_order_gives_the_exact_pool(n: int, k: int, block: int, seed: int,
                                         ints: bool) -> None:
    """Same rows, same scores, ties included: small blocks force several hops."""
    rng = np.random.default_rng(seed)
    if ints:
        f = rng.integers(-3, 4, (n, 4)).astype(np.float32)
        vec = rng.integers(-2, 3, 4).astype(np.float32)
    else:
        f = factors(n, k=8, seed=seed % 1000)
        vec = f[rng.integers(0, n, 3)].mean(axis=0)
    want_rows, want_scores = exact_pool(f, vec, k)
    rows, scores = NormOrder(f).pool(vec, k, block=block)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)


def test_norm_order_scores_a_small_share_of_a_skewed_catalog() -> None:
    f = factors(40_000, spread=3.0)
    order = NormOrder(f)
    rng = np.random.default_rng(9)
    scored = []
    for _ in range(20):
        vec = f[rng.integers(0, len(f), 5)].mean(axis=0)
        rows, _ = order.pool(vec, K)
        np.testing.assert_array_equal(rows, exact_pool(f, vec, K)[0])
        scored.append(order.last_scored)
    assert np.median(scored) < 0.25 * len(f), scored


def test_norm_order_of_even_norms_scores_everything_and_is_still_exact() -> None:
    f = factors(10_000, spread=0.0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    order = NormOrder(f)
    vec = f[:3].mean(axis=0)
    rows, _ = order.pool(vec, K)
    np.testing.assert_array_equal(rows, exact_pool(f, vec, K)[0])
    assert order.last_scored == len(f)


def test_holder_orders_a_large_catalog_only() -> None:
    async def go() -> None:
        holder = ModelHolder(None, "t", order_min_items=1_000)  # type: ignore[arg-type]
        small, large = artifact(999, "small"), artifact(3_000, "large")
        holder._order_later(small)
        await holder.order_ready()
        assert small.norm_order is None
        vec = large.item_factors[7]
        exact = large.pool(vec, K)
        holder._order_later(large)
        await holder.order_ready()
        assert large.norm_order is not None and large.norm_order.n_items == 3_000
        rows, _ = large.pool(vec, K)
        np.testing.assert_array_equal(rows, exact[0])
        await holder.stop()

    asyncio.run(go())


def test_a_newer_model_cancels_the_older_build() -> None:
    async def go() -> None:
        holder = ModelHolder(None, "t", order_min_items=1)  # type: ignore[arg-type]
        old, new = artifact(20_000, "old"), artifact(500, "new")
        holder._order_later(old)
        holder._order_later(new)
        await holder.order_ready()
        await asyncio.sleep(0)
        assert new.norm_order is not None
        assert old.norm_order is None  # its task was cancelled before it could attach
        await holder.stop()

    asyncio.run(go())
