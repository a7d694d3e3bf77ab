"""Scores → ranked ids: dot-product scoring, exact top-k, and blending sources.

Ties are broken by the lower index everywhere, so the same scores always give the same
ranking (argpartition alone would pick an arbitrary member of a tie at the cut).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def score_items(user_vecs: np.ndarray, item_factors: np.ndarray) -> np.ndarray:
    """Dot-product scores: ``(k,)`` → ``(n_items,)``, or ``(u, k)`` → ``(u, n_items)``.

    >>> score_items(np.array([1.0, 2.0]), np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
    [1.0, 2.0]
    """
    return user_vecs @ item_factors.T


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None,
          ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row, best first: ``(idx int64, scores)``.

    ``scores`` is ``(n,)`` or ``(u, n)``; ``exclude`` (bool, same shape) removes entries
    (already bought, out of stock). A 1-D answer is cut to the entries not excluded; a 2-D
    one stays rectangular and pads with ``-inf`` scores when a row runs out.

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9]), 2)
    (array([1, 3]), array([0.9, 0.9]))
    >>> top_k(np.array([0.1, 0.9, 0.5]), 5, exclude=np.array([False, True, False]))
    (array([2, 0]), array([0.5, 0.1]))
    """
    rows = np.atleast_2d(np.asarray(scores, dtype=np.result_type(scores, np.float32)))
    if exclude is not None:
        rows = np.where(np.atleast_2d(exclude), -np.inf, rows)
    idx = top_k_rows(rows, k)
    best = np.take_along_axis(rows, idx, axis=1)
    if np.ndim(scores) == 2:
        return idx, best
    keep = best[0] > -np.inf
    return idx[0][keep], best[0][keep]


def top_k_rows(rows: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries of each row, ordered by (-score, index).

    O(n) per row: the k-th largest value by ``np.partition`` (values only, cheaper than
    argpartition), then every entry above it plus the lowest-index entries equal to it.
    ``rows`` must not hold NaN (excluded entries are ``-inf``).

    >>> top_k_rows(np.array([[0.0, 2.0, 0.0, 1.0, 0.0]]), 3).tolist()
    [[1, 3, 0]]
    """
    n_rows, n = rows.shape
    k = min(k, n)
    if k == 0:
        return np.empty((n_rows, 0), dtype=np.int64)
    cut = np.partition(rows, n - k, axis=1)[:, n - k]
    r, c = np.nonzero(rows >= cut[:, None])  # row-major: columns ascend within a row
    vals = rows[r, c]
    above = vals > cut[r]
    # Entries tied with the cut are taken in index order until the row has k.
    tied = ~above
    rank = np.cumsum(tied)
    starts = np.searchsorted(r, np.arange(n_rows))
    rank -= np.concatenate(([0], rank))[starts][r]
    need = k - np.bincount(r[above], minlength=n_rows)
    keep = above | (rank <= need[r])
    return _order(rows, c[keep].reshape(n_rows, k))


def _order(rows: np.ndarray, part: np.ndarray) -> np.ndarray:
    # part's columns ascend within each row, so a stable sort by score keeps ties by index.
    vals = np.take_along_axis(rows, part, axis=1)
    return np.take_along_axis(part, np.argsort(-vals, axis=1, kind="stable"), axis=1)


def blend(*sources: tuple[Mapping[str, float], float]) -> dict[str, float]:
    """Add several candidate sources, each scaled to [0, 1] by its own maximum.

    Each source is ``(scores, weight)``. Scaling by the source's max makes sources of
    different units comparable ("bought together 40 times" vs a cosine of 0.3): the best
    candidate of every source counts ``weight``, the rest in proportion. Non-positive
    scores count zero, as does a source whose max is not positive. Best first.

    >>> blend(({"a": 40.0, "b": 10.0}, 1.0), ({"b": 0.3, "c": 0.15}, 0.5))
    {'a': 1.0, 'b': 0.75, 'c': 0.25}
    """
    total: dict[str, float] = {}
    for scores, weight in sources:
        top = max(scores.values(), default=0.0)
        if top <= 0:
            continue
        for item, score in scores.items():
            total[item] = total.get(item, 0.0) + weight * max(score, 0.0) / top
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))
