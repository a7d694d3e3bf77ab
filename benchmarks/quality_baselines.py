"""The baselines, fitted on the same training log as the served model.

* popularity: items by how many customers touched them;
* item-kNN: ``implicit``'s ``CosineRecommender`` (co-occurrence cosine, K=100 neighbours);
* batch ALS: ``implicit``'s ``AlternatingLeastSquares`` with its default parameters
  (factors 100, regularization 0.01, alpha 1.0, 15 iterations), seed 42;

all on the matrix of interaction counts (one per order line, view, cart add or favourite),
with no decay and no event weights: that is what a plain setup would feed them.
For related items, plain co-occurrence: items in the most training baskets with the anchor.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.nearest_neighbours import CosineRecommender
from threadpoolctl import threadpool_limits

from benchmarks.quality_data import Split, touched
from models.matrix import Interactions, build_interactions


def count_matrix(split: Split) -> Interactions:
    return build_interactions((ev.user_id or "", item, 1.0)
                              for ev in split.train for item in touched(ev))


def popularity(inter: Interactions, users: Sequence[str], k: int, new_only: bool,
               history: dict[str, set[str]]) -> dict[str, list[str]]:
    support = np.diff(inter.matrix.tocsc().indptr)
    order = np.argsort(-support, kind="stable")
    ranked = [inter.item_ids[j] for j in order[: k + max(map(len, history.values()))]]
    out = {}
    for user in users:
        seen = history.get(user, set()) if new_only else set()
        out[user] = [i for i in ranked if i not in seen][:k]
    return out


def _recommend(model: CosineRecommender | AlternatingLeastSquares, inter: Interactions,
               users: Sequence[str], k: int, new_only: bool) -> dict[str, list[str]]:
    index = {u: n for n, u in enumerate(inter.user_ids)}
    rows = np.array([index[u] for u in users])
    matrix = sp.csr_matrix(inter.matrix)
    ids, _ = model.recommend(rows, matrix[rows], N=k, filter_already_liked_items=new_only)
    return {u: [inter.item_ids[j] for j in ids[n] if j >= 0] for n, u in enumerate(users)}


def item_knn(inter: Interactions, users: Sequence[str], k: int, new_only: bool,
             ) -> dict[str, list[str]]:
    model = CosineRecommender(K=100, num_threads=0)
    model.fit(inter.matrix, show_progress=False)
    return _recommend(model, inter, users, k, new_only)


def default_als(inter: Interactions, users: Sequence[str], k: int, new_only: bool,
                ) -> dict[str, list[str]]:
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(random_state=42, num_threads=0)
        model.fit(inter.matrix, show_progress=False)
        return _recommend(model, inter, users, k, new_only)


def co_occurrence(baskets: Sequence[Sequence[str]]) -> dict[str, Counter[str]]:
    """Per item, how many training baskets it shares with each other item."""
    pairs: dict[str, Counter[str]] = defaultdict(Counter)
    for basket in baskets:
        for a in basket:
            pairs[a].update(b for b in basket if b != a)
    return pairs


def co_related(pairs: dict[str, Counter[str]], anchors: Sequence[str], k: int,
               ) -> dict[str, list[str]]:
    # Ties by item id, as the service breaks them.
    return {a: [i for i, _ in sorted(pairs.get(a, Counter()).items(),
                                      key=lambda kv: (-kv[1], kv[0]))[:k]]
            for a in anchors}
