"""Training cost: bare ``implicit`` fit vs our whole path (fit_als + similar_items + bytes).

Run from the repo root: ``python -m benchmarks.bench_training``. Writes
``benchmarks/results/training_bare.json``. Same Online Retail matrix as bench_foldin;
median of 3 runs. Both sides pin BLAS to one thread (implicit's own advice), so the
difference is our wrapper, the similarity table and serialisation, not BLAS contention.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from benchmarks.bench_foldin import machine, online_retail, write_result
from models.als import ALSParams, fit_als, similar_items
from models.artifacts import ModelArtifact, new_version
from models.matrix import Interactions

RUNS = 3
TOP_K_SIMILAR = 50


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bare_fit(inter: Interactions, params: ALSParams) -> None:
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=params.factors,
                                        regularization=params.regularization,
                                        alpha=params.alpha, iterations=params.iterations,
                                        random_state=params.seed)
        model.fit(inter.matrix, show_progress=False)


def our_path(inter: Interactions, params: ALSParams) -> dict[str, float]:
    fit_s, (_, items) = timed(lambda: fit_als(inter, params))
    sim_s, (sim_ids, sim_scores) = timed(lambda: similar_items(items, TOP_K_SIMILAR))
    art = ModelArtifact(version=new_version(), created_at=time.time(), ref_ts=0.0,
                        params=vars(params), item_ids=inter.item_ids, item_factors=items,
                        similar_ids=sim_ids, similar_scores=sim_scores,
                        consumable=np.zeros(len(items), dtype=bool), stats={})
    bytes_s, blob = timed(art.to_bytes)
    return {"fit_als_s": fit_s, "similar_items_s": sim_s, "to_bytes_s": bytes_s,
            "total_s": fit_s + sim_s + bytes_s, "artifact_mb": len(blob) / 2**20}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def main() -> None:
    inter = online_retail()
    params = ALSParams()
    print(f"matrix {inter.matrix.shape}, nnz {inter.matrix.nnz}, k={params.factors}, "
          f"{params.iterations} iterations, {RUNS} runs")
    bare = [timed(lambda: bare_fit(inter, params))[0] for _ in range(RUNS)]
    ours = median_of([our_path(inter, params) for _ in range(RUNS)])
    result = {"benchmark": "training", "machine": machine(), "runs": RUNS,
              "matrix": {"users": inter.matrix.shape[0], "items": inter.matrix.shape[1],
                         "nnz": int(inter.matrix.nnz)},
              "params": vars(params), "top_k_similar": TOP_K_SIMILAR,
              "bare_implicit_fit_s": round(statistics.median(bare), 4),
              "ours_median": ours}
    print(f"bare implicit fit: {result['bare_implicit_fit_s']} s (median)")
    print("ours: " + ", ".join(f"{k}={v}" for k, v in ours.items()))
    print(f"wrote {write_result('training_bare.json', result)}")


if __name__ == "__main__":
    main()
