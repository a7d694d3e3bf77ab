"""What publishing item-kNN neighbours with the model costs a retrain: the kNN step next
to the ALS fit and the ALS neighbours on the same matrix, in the same run, and the
artifact's size with and without them.

Run from the repo root: ``python -m benchmarks.bench_knn [--rounds N]``.
Writes ``benchmarks/results/knn_cost.json``.

The matrix is each dataset's whole log as the ``ia`` zsets hold it (the current model
defaults' event weights and half-life, ``tune_quality.ia_matrix``); the steps are the
ones ``models/train.py`` runs: ``fit_als``, ``shrunk_similar_items`` and
``knn_neighbours`` (``model.knn_neighbours`` per item). CPU seconds (``process_time``, all
threads) are the steadier figure on a shared machine; wall seconds beside them. Best of
``rounds``.

Per answer: the source's own work in the API (``recent_anchors`` + ``similar_to_viewed``
over the published neighbours, the service's defaults) for 1,000 of the dataset's
customers, from states built as the store holds them (``ia`` weights, views newest
first), CPU µs per customer.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console

from aisle.settings import ModelSettings, ServingSettings
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.quality_data import DATASETS, load, split, touched
from benchmarks.tune_quality import MODEL_KEYS, WEIGHT_OF, ia_matrix
from feature_store.reader import UserState
from models.als import ALSParams, fit_als
from models.artifacts import ModelArtifact
from models.train import knn_neighbours, shrunk_similar_items
from serving.viewed import published_neighbours, recent_anchors, similar_to_viewed
from streams.events import OrderPlaced, ProductViewed

console = Console(width=None if sys.stdout.isatty() else 150)


def timed(step: Callable[[], Any], rounds: int) -> tuple[Any, dict[str, float]]:
    best: dict[str, float] = {}
    out = None
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        out = step()
        got = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        best = got if not best or got["cpu_s"] < best["cpu_s"] else best
    return out, {k: round(v, 3) for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tree = tree_state()
    m = ModelSettings()
    params = ALSParams(factors=m.factors, regularization=m.regularization,
                       iterations=m.iterations, alpha=m.alpha, seed=m.seed)
    result: dict[str, Any] = {"benchmark": "knn_cost", "machine": machine_info(tree),
                              "knn_neighbours": m.knn_neighbours, "datasets": {}}
    for name in sorted(DATASETS):
        result["datasets"][name] = measure(name, params, m, args.rounds)
        console.print(f"{name}: {result['datasets'][name]}")
    console.print(f"wrote {write_result('knn_cost.json', result)}")


def measure(name: str, params: ALSParams, m: ModelSettings, rounds: int) -> dict[str, Any]:
    inter = ia_matrix(split(load(name), np.inf), {k: getattr(m, k) for k in MODEL_KEYS})
    (_, item_f), fit = timed(lambda: fit_als(inter, params), rounds)
    (sim_ids, sim_s), als_nb = timed(
        lambda: shrunk_similar_items(item_f, inter, m.top_k_similar, m.similar_min_support),
        rounds)
    (knn_ids, knn_s), knn = timed(lambda: knn_neighbours(inter, m.knn_neighbours), rounds)
    art = ModelArtifact("v", 0.0, 0.0, vars(params).copy(), list(inter.item_ids), item_f,
                        sim_ids, sim_s, np.zeros(len(inter.item_ids), dtype=bool))
    without = len(art.to_bytes())
    art.knn_ids, art.knn_scores = knn_ids, knn_s
    with_knn = len(art.to_bytes())
    return {"users": len(inter.user_ids), "items": len(inter.item_ids),
            "source_us_per_answer": source_cost(name, art),
            "nnz": int(inter.matrix.nnz), "fit_als": fit, "als_neighbours": als_nb,
            "knn_neighbours": knn,
            "knn_cpu_vs_fit_pct": round(100 * knn["cpu_s"] / fit["cpu_s"], 1),
            "artifact_bytes": {"without_knn": without, "with_knn": with_knn}}


def source_cost(name: str, art: ModelArtifact, customers: int = 1000) -> dict[str, float]:
    """CPU µs per answer of the source's scoring, over states as the store keeps them."""
    s = ServingSettings()
    m = ModelSettings()
    views: dict[str, dict[str, float]] = {}
    weights: dict[str, dict[str, float]] = {}
    bought: dict[str, dict[str, int]] = {}
    for ev in load(name):
        for item in touched(ev):
            user = ev.user_id or ""
            if isinstance(ev, OrderPlaced):
                bought.setdefault(user, {})[item] = bought.get(user, {}).get(item, 0) + 1
            if isinstance(ev, ProductViewed):
                views.setdefault(user, {})[item] = ev.ts
            w = getattr(m, WEIGHT_OF[type(ev)])
            weights.setdefault(user, {})[item] = weights.get(user, {}).get(item, 0.0) + w
    users = sorted(weights)[:customers]
    states = [UserState(u, sorted(views.get(u, {}).items(), key=lambda kv: -kv[1]), {},
                        bought.get(u, {}), {}, {},
                        [(i.encode(), np.log(w)) for i, w in weights[u].items()], None, {})
              for u in users]
    near = published_neighbours(art, s.viewed_similar_source)
    started = time.process_time()
    found = 0
    for state in states:
        anchors = recent_anchors(state, s.viewed_similar_half_life_h * 3600,
                                 s.viewed_similar_anchors)
        found += len(similar_to_viewed(anchors, near, s.viewed_similar_neighbours,
                                       s.viewed_similar_norm).scores)
    cpu = time.process_time() - started
    return {"customers": len(states), "cpu_us": round(1e6 * cpu / len(states), 1),
            "candidates_per_answer": round(found / len(states), 1)}


if __name__ == "__main__":
    main()
