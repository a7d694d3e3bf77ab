"""ALS pools of concurrent recommendations computed back to back (serving/pools.py):
the same pool as computing it alone, together only when others are in flight, and one
request's failure or cancellation is its own."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.pool import exact_pool
from serving.pools import PoolBatch


class Factors:
    """The part of a model artifact the batch calls: pool(vec, k)."""

    def __init__(self, n: int = 500, k: int = 16, seed: int = 3) -> None:
        self.item_factors = np.random.default_rng(seed).standard_normal((n, k)).astype(
            np.float32)
        self.calls = 0

    def pool(self, vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if not np.isfinite(vec).all():
            raise ValueError("a vector that is not finite")
        return exact_pool(self.item_factors, vec, k)


async def _in_flight(batch: PoolBatch, art: Factors, vec: np.ndarray, k: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """As a recommendation holds it: counted busy for its whole life."""
    batch.busy += 1
    try:
        await asyncio.sleep(0)  # its store read
        return await batch.pool(art, vec, k)  # type: ignore[arg-type]
    finally:
        batch.busy -= 1


def test_concurrent_requests_share_one_turn_and_get_their_own_exact_pools() -> None:
    art = Factors()
    vecs = np.random.default_rng(5).standard_normal((12, 16)).astype(np.float32)
    batch = PoolBatch()

    async def go() -> list[tuple[np.ndarray, np.ndarray]]:
        return await asyncio.gather(*(_in_flight(batch, art, v, 50) for v in vecs))

    got = asyncio.run(go())
    assert batch.batches == 1 and batch.batched == 12  # all of them in one callback
    for vec, (rows, scores) in zip(vecs, got, strict=True):
        want_rows, want_scores = exact_pool(art.item_factors, vec, 50)
        assert np.array_equal(rows, want_rows) and np.array_equal(scores, want_scores)


def test_a_request_alone_computes_at_once() -> None:
    art, batch = Factors(), PoolBatch()
    vec = np.ones(16, dtype=np.float32)
    rows, _ = asyncio.run(_in_flight(batch, art, vec, 10))
    assert batch.batches == 0 and art.calls == 1 and len(rows) == 10


def test_one_requests_failure_or_cancellation_leaves_the_others_their_pools() -> None:
    art, batch = Factors(), PoolBatch()
    good = np.ones(16, dtype=np.float32)
    bad = np.full(16, np.nan, dtype=np.float32)

    async def go() -> None:
        first = asyncio.ensure_future(_in_flight(batch, art, good, 5))
        cancelled = asyncio.ensure_future(_in_flight(batch, art, good, 5))
        failing = asyncio.ensure_future(_in_flight(batch, art, bad, 5))
        last = asyncio.ensure_future(_in_flight(batch, art, good * 2, 5))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # all four wait in the batch now
        cancelled.cancel()
        rows, _ = await first
        assert len(rows) == 5
        with pytest.raises(ValueError, match="not finite"):
            await failing
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert np.array_equal((await last)[0], exact_pool(art.item_factors, good * 2, 5)[0])
        assert art.calls == 3  # the cancelled request's pool was not computed
        assert batch.busy == 0

    asyncio.run(go())
