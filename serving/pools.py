"""The ALS pools of concurrent recommendations, computed back to back.

Every recommendation scores the catalog with the customer's vector (``models/pool.py``).
Alone, most of that time goes into fetching the item factors from memory: at Online
Retail's 3,656 items × 96 factors (1.4 MB of float32) the product takes ~125 µs with the
factors out of the caches and ~25 µs with them in. Under load they are always out: the
requests in between have used the caches for everything else.

Requests whose customer reads come back in the same loop turn (the pipelined store
connection sends reads made in one turn together, and the store answers them in one
write) reach the pool together. Here they ask for it together: one callback computes
their pools one after the other, so the factors are fetched from memory once for all of
them. Each pool is the same call as before, so every answer is the same, bit for bit.
A recommendation with no other one in flight computes its pool at once: it waits for
nobody, and costs no extra loop turn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter

if TYPE_CHECKING:
    from models.artifacts import ModelArtifact

POOLS = Counter("aisle_als_pools_total", "ALS pools computed: alone, or together with "
                "other requests' in one loop turn (serving/pools.py)", ["how"])
_ALONE, _TOGETHER = POOLS.labels("alone"), POOLS.labels("together")

Pool = tuple[np.ndarray, np.ndarray]


class PoolBatch:
    """Shared by the recommendation services of one process (the experiments' variants
    included): ``busy`` counts the recommendations in flight."""

    def __init__(self) -> None:
        self.busy = 0
        self._pending: list[tuple[ModelArtifact, np.ndarray, int, asyncio.Future[Pool]]] = []
        self.batches = 0  # callbacks run and pools computed in them (tests, benchmarks)
        self.batched = 0

    async def pool(self, art: ModelArtifact, vec: np.ndarray, k: int) -> Pool:
        """``art.pool(vec, k)``, computed with the pools asked for in the same turn."""
        if self.busy <= 1:  # nobody else in flight: nobody to wait for
            _ALONE.inc()
            return art.pool(vec, k)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Pool] = loop.create_future()
        if not self._pending:
            # Runs after the callbacks already due in this turn: the other requests
            # resumed by the same store reply reach their pools first.
            loop.call_soon(self._run)
        self._pending.append((art, vec, k, future))
        return await future

    def _run(self) -> None:
        batch, self._pending = self._pending, []
        self.batches += 1
        self.batched += len(batch)
        _TOGETHER.inc(len(batch))
        for art, vec, k, future in batch:
            if future.done():  # its request was cancelled meanwhile
                continue
            try:
                future.set_result(art.pool(vec, k))
            except Exception as exc:  # that request's error, not the others'
                future.set_exception(exc)
