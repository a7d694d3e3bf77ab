"""Offline ranking metrics: Recall@k, NDCG@k, catalog coverage, hit rate.

Binary relevance: an item is relevant if the customer interacted with it in the test
period. Recall@k divides by ``min(|relevant|, k)`` (as in Liang et al., "Variational
Autoencoders for Collaborative Filtering", 2018), so a perfect list scores 1 even for a
customer with more than ``k`` relevant items. Users with nothing relevant are left out
of every mean (they cannot be scored).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the (at most ``k``) relevant items that the top ``k`` hold.

    >>> recall_at_k(["a", "b", "c"], {"a", "c", "z"}, 2)
    0.5
    >>> recall_at_k(["a", "b"], {"a"}, 20)
    1.0
    """
    if not relevant:
        raise ValueError("recall needs at least one relevant item")
    hits = sum(1 for item in ranked[:k] if item in relevant)
    return hits / min(len(relevant), k)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """DCG of the top ``k`` (gain 1 per relevant item, ``1/log2(rank+1)``) over the best
    possible DCG with ``min(|relevant|, k)`` hits.

    >>> ndcg_at_k(["a", "b"], {"a"}, 2)
    1.0
    >>> round(ndcg_at_k(["b", "a"], {"a"}, 2), 4)  # 1/log2(3)
    0.6309
    """
    if not relevant:
        raise ValueError("NDCG needs at least one relevant item")
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(ranked[:k])
              if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal


def hit_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """1.0 if any of the top ``k`` is relevant, else 0.0.

    >>> hit_at_k(["a", "b", "c"], {"c"}, 2), hit_at_k(["a", "b", "c"], {"c"}, 3)
    (0.0, 1.0)
    """
    return float(any(item in relevant for item in ranked[:k]))


def catalog_coverage(lists: Iterable[Sequence[str]], catalog_size: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-``k`` list.

    >>> catalog_coverage([["a", "b"], ["b", "c"]], 4, 2)
    0.75
    """
    if catalog_size <= 0:
        raise ValueError("catalog_size must be > 0")
    shown = {item for ranked in lists for item in ranked[:k]}
    return len(shown) / catalog_size


def evaluate(lists: Mapping[str, Sequence[str]], truth: Mapping[str, Collection[str]],
             k: int, catalog_size: int) -> dict[str, float]:
    """Mean Recall@k, NDCG@k and hit rate over the users of ``truth`` (a missing list
    counts as empty), and the coverage of their lists.

    >>> evaluate({"u": ["a", "b"], "v": ["c"]}, {"u": {"b"}, "v": {"d"}}, 2, 4)
    {'users': 2, 'recall': 0.5, 'ndcg': 0.3155, 'hit_rate': 0.5, 'coverage': 0.75}
    """
    users = [u for u, rel in truth.items() if rel]
    if not users:
        raise ValueError("no user has a relevant item")
    recall = [recall_at_k(lists.get(u, ()), truth[u], k) for u in users]
    ndcg = [ndcg_at_k(lists.get(u, ()), truth[u], k) for u in users]
    hits = [hit_at_k(lists.get(u, ()), truth[u], k) for u in users]
    return {"users": len(users),
            "recall": round(float(np.mean(recall)), 4),
            "ndcg": round(float(np.mean(ndcg)), 4),
            "hit_rate": round(float(np.mean(hits)), 4),
            "coverage": round(catalog_coverage((lists.get(u, ()) for u in users),
                                               catalog_size, k), 4)}
