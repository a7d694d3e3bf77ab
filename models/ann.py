"""The ALS pool: the items a customer's vector scores highest, exactly or from a graph.

Every recommendation starts from the ``ALS_POOL`` (200) items with the highest inner
product with the customer's vector. Scoring every item is one matrix-vector product over
the whole catalog, and it is memory-bound: at 84,793 items × 96 factors it reads 32 MB
per answer, 2.8 ms of one core (``benchmarks/bench_ann.py``), three times the rest of
the answer. Above ``serving.als_ann_min_items`` items the API searches an HNSW graph
over the item factors instead (faiss ``IndexHNSWFlat``, inner-product metric: the
scores are the same dot products, only which items get scored changes), built in a
thread after each model loads; until it is ready, and for smaller catalogs, the pool is
exact. ``bench_ann`` reports the search's recall against the exact pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


def exact_pool(item_factors: np.ndarray, vec: np.ndarray, k: int,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Rows (ascending) and scores of the ``k`` best-scoring items with a positive
    score. The cut comes from one partition of the values (faster than argpartition);
    items tied at the cut fill what the better ones leave, lowest rows first. (The
    code this replaced took the first ``k`` rows at or above the cut, which could drop
    a better item behind ties: the property test here found it.)"""
    scores = item_factors @ vec
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    cut = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > cut)
    if len(above) < k:
        above = np.sort(np.concatenate([above, np.flatnonzero(scores == cut)[:k - len(above)]]))
    top = above[scores[above] > 0]
    return top, scores[top]


@dataclass(frozen=True, slots=True)
class AnnSettings:
    min_items: int = 20_000      # smaller catalogs: the exact pool (0: never an index)
    m: int = 32                  # graph links per item
    ef_construction: int = 40
    ef_search: int = 256         # candidates kept while searching; recall vs time


class PoolIndex:
    """An HNSW graph over one model's item factors. Build it off the event loop
    (:meth:`build` blocks for seconds; faiss releases the GIL meanwhile)."""

    def __init__(self, index: Any, n_items: int, build_s: float) -> None:
        self._index = index
        self.n_items = n_items
        self.build_s = build_s

    @classmethod
    def build(cls, item_factors: np.ndarray, ann: AnnSettings) -> PoolIndex:
        import faiss  # imported here: only an API serving a large catalog needs it

        # One thread: the API's other thread of work is answering requests.
        faiss.omp_set_num_threads(1)
        started = time.perf_counter()
        factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        index = faiss.IndexHNSWFlat(factors.shape[1], ann.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ann.ef_construction
        index.hnsw.efSearch = ann.ef_search
        index.add(factors)
        return cls(index, len(factors), time.perf_counter() - started)

    def search(self, vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As :func:`exact_pool`: rows ascending, positive scores only, at most ``k``."""
        query = np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1)
        scores, rows = self._index.search(query, min(k, self.n_items))
        scores, rows = scores[0], rows[0]
        keep = (rows >= 0) & (scores > 0)  # -1: the graph gave fewer than k
        rows, scores = rows[keep], scores[keep]
        order = np.argsort(rows, kind="stable")
        return rows[order], scores[order]
