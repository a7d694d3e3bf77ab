"""The ALS pool: the items a customer's vector scores highest, for any catalog size.

Every recommendation starts from the ``ALS_POOL`` (200) items with the highest inner
product with the customer's vector. numpy's way (one matrix-vector product over every
item, then a partition) is memory-bound and slow at catalog scale: 3.2-3.7 ms of one
core per answer at 84,793 items × 96 factors (``benchmarks/bench_ann.py``), several
times the rest of the answer. Above ``serving.als_ann_min_items`` items the API asks a
faiss index instead, built in a thread after each model loads (the exact pool answers
until it is ready):

- ``fp16`` (default): every item is still scored, from half-precision copies of the
  factors with faiss's SIMD scan and top-k heap: 0.66 ms, 0.994 of the exact pool and
  all of its top 20 found; built in tens of milliseconds.
- ``hnsw``: a graph (``IndexHNSWFlat``, inner product) scores a few thousand items:
  0.3-0.4 ms at 85k items and near-constant as the catalog grows, but only ~0.81 of the
  exact pool (0.96 of its top 20) at ``ef_search`` 256, and seconds to build.

Either way the scores of the items found are recomputed exactly (200 dot products), so
only which items enter the pool can differ from the exact one, never their scores.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

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


_pinned = threading.local()


def _one_thread() -> None:
    """faiss's OpenMP to one thread in the calling thread (the setting is per thread): a
    single query split over two threads spins the second one, which the API's other
    requests need, and saves no time at this size."""
    if not getattr(_pinned, "done", False):
        import faiss

        faiss.omp_set_num_threads(1)
        _pinned.done = True


@dataclass(frozen=True, slots=True)
class AnnSettings:
    kind: Literal["fp16", "hnsw"] = "fp16"
    min_items: int = 20_000      # smaller catalogs: the exact pool (0: never an index)
    m: int = 32                  # hnsw: graph links per item
    ef_construction: int = 40    # hnsw
    ef_search: int = 256         # hnsw: candidates kept while searching; recall vs time


class PoolIndex:
    """A faiss index over one model's item factors. Build it off the event loop
    (:meth:`build` can take seconds; faiss releases the GIL meanwhile)."""

    def __init__(self, index: Any, item_factors: np.ndarray, build_s: float) -> None:
        self._index = index
        self._factors = item_factors
        self.n_items = len(item_factors)
        self.build_s = build_s

    @classmethod
    def build(cls, item_factors: np.ndarray, ann: AnnSettings) -> PoolIndex:
        import faiss  # imported here: only an API serving a large catalog needs it

        _one_thread()  # the API's other thread of work is answering requests
        started = time.perf_counter()
        factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        d = factors.shape[1]
        if ann.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, ann.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ann.ef_construction
            index.hnsw.efSearch = ann.ef_search
        else:
            index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16,
                                               faiss.METRIC_INNER_PRODUCT)
            index.train(factors)
        index.add(factors)
        return cls(index, factors, time.perf_counter() - started)

    def search(self, vec: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As :func:`exact_pool`: rows ascending, exact positive scores, at most ``k``."""
        _one_thread()
        query = np.ascontiguousarray(vec, dtype=np.float32).reshape(1, -1)
        _, rows = self._index.search(query, min(k, self.n_items))
        rows = np.sort(rows[0][rows[0] >= 0])  # -1: the index gave fewer than k
        scores = self._factors[rows] @ vec
        keep = scores > 0
        return rows[keep], scores[keep]
