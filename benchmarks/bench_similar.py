"""Similar items at Taobao's 74k items: all pairs vs neighbours only among supported items.

Run from the repo root: ``python -m benchmarks.bench_similar``. Writes
``benchmarks/results/similar.json``.

The Taobao slice's training matrix (every view, cart, favourite and purchase with the
default event weights; no decay over its 2 hours) is fitted once with the default
settings; then ``shrunk_similar_items`` — what ``train_once`` publishes — runs with
``min_support`` 1 (every item a candidate: the all-pairs baseline), 2 (the default) and
3, side by side in one process. Besides the seconds, the overlap of the lists with the
all-pairs ones, and with the exact answer both approximate: the top 50 by
``cosine × n/(n+5)`` over every item, by brute force. (All pairs takes the top 100 by
cosine, then shrinks: on Taobao most of those 100 have one customer, so it can miss the
well-supported neighbours the shrink is meant to favour.)
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from rich.console import Console

from aisle.settings import ModelSettings
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.quality_data import load
from benchmarks.tune_quality import defaults, ia_matrix
from models.als import ALSParams, fit_als
from models.scoring import top_k_rows
from models.train import SUPPORT_SHRINK, shrunk_similar_items
from streams.events import AnyEvent

console = Console(width=None if sys.stdout.isatty() else 150)


class _All:
    """The whole log as a training split (ia_matrix only reads ``train``)."""

    def __init__(self, events: list[AnyEvent]) -> None:
        self.train = events


def exact_shrunk(items: np.ndarray, support: np.ndarray, top_k: int) -> np.ndarray:
    """The reference: top ``top_k`` of ``cosine × n/(n+5)`` over *every* other item, by
    brute force (what the shrink means; both fast paths approximate it)."""
    unit = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    shrink = (support / (support + SUPPORT_SHRINK)).astype(np.float32)
    out = np.empty((len(items), top_k), dtype=np.int64)
    for start in range(0, len(items), 128):
        stop = min(len(items), start + 128)
        sims = (unit[start:stop] @ unit.T) * shrink
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        out[start:stop] = top_k_rows(sims, top_k)
    return out


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(x[:k]) & set(y[:k])) / max(1, min(k, len(x)))
                          for x, y in zip(a, b, strict=True)]))


def main() -> None:
    tree = tree_state()
    m = ModelSettings()
    inter = ia_matrix(_All(load("taobao")), defaults())  # type: ignore[arg-type]
    support = np.diff(inter.matrix.tocsc().indptr)
    _, items = fit_als(inter, ALSParams(factors=m.factors, regularization=m.regularization,
                                        iterations=m.iterations, alpha=m.alpha, seed=m.seed))
    runs: dict[int, dict[str, Any]] = {}
    lists: dict[int, np.ndarray] = {}
    for min_support in (1, 2, 3):
        started = time.perf_counter()
        ids, _ = shrunk_similar_items(items, inter, m.top_k_similar, min_support)
        seconds = time.perf_counter() - started
        lists[min_support] = ids
        runs[min_support] = {"seconds": round(seconds, 2),
                             "candidates": int((support >= min_support).sum())}
        console.print(f"min_support {min_support}: {runs[min_support]}")
    started = time.perf_counter()
    exact = exact_shrunk(items, support, m.top_k_similar)
    exact_s = round(time.perf_counter() - started, 2)
    base = lists[1]
    supported = support >= 2
    for min_support, ids in lists.items():
        r = runs[min_support]
        r["speedup_vs_all_pairs"] = round(runs[1]["seconds"] / r["seconds"], 2)
        r["top10_overlap_with_all_pairs"] = round(overlap(ids, base, 10), 4)
        r["top10_overlap_with_all_pairs_supported_items"] = round(
            overlap(ids[supported], base[supported], 10), 4)
        r["top10_overlap_with_exact"] = round(overlap(ids, exact, 10), 4)
        r["top50_overlap_with_exact"] = round(overlap(ids, exact, 50), 4)
    result = {"benchmark": "similar_items", "machine": machine_info(tree),
              "matrix": {"users": len(inter.user_ids), "items": len(inter.item_ids),
                         "nnz": int(inter.matrix.nnz)},
              "top_k": m.top_k_similar, "factors": m.factors, "exact_brute_force_s": exact_s,
              "runs": runs}
    for min_support, r in runs.items():
        console.print(f"min_support {min_support}: {r}")
    console.print(f"wrote {write_result('similar.json', result)}")


if __name__ == "__main__":
    main()
