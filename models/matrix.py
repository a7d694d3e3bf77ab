"""Interactions → a users × items CSR matrix of decayed weights.

Weights are kept *forward-decayed* (Cormode et al., "Forward Decay", ICDE 2009): an
interaction of weight ``w`` at time ``ts`` is stored as ``logw = log(w) + ts / tau`` with
``tau = half_life_s / ln 2``. Sums of such weights are log-add-exp sums that never need
rewriting as time passes; the weight *as of* any ``ref_ts`` is ``exp(logw - ref_ts / tau)``.
This is the same transform as :func:`feature_store.updates.forward_log_weight`, which
writes the ``ia`` zsets these functions read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

LN2 = math.log(2.0)
# exp() of anything above ~709 overflows float64; a weight of e^700 is already absurd.
_MAX_EXP = 700.0

# A float in gives a float out, an array in an array out (elementwise).
F = TypeVar("F", float, np.ndarray)


def decays(half_life_s: float) -> bool:
    """Zero, negative or infinite half-life means "no decay": logw is just log(w).

    >>> decays(86400.0), decays(math.inf), decays(0.0)
    (True, False, False)
    """
    return half_life_s > 0 and not math.isinf(half_life_s)


def log_weight(w: F, ts: F | float, half_life_s: float) -> F:
    """Forward transform: ``log(w) + ts / tau`` (a zero weight gives ``-inf``).

    >>> log_weight(2.0, 1e9, math.inf) == math.log(2.0)
    True
    """
    with np.errstate(divide="ignore"):
        out = np.log(np.asarray(w, dtype=np.float64)) + _time_term(ts, half_life_s)
    return float(out) if np.ndim(out) == 0 else out  # type: ignore[return-value]


def decayed_weight(logw: F, ref_ts: float, half_life_s: float) -> F:
    """The weight as of ``ref_ts`` of a forward-decayed log weight.

    >>> lw = log_weight(1.0, 0.0, 3600.0)
    >>> round(decayed_weight(lw, 3600.0, 3600.0), 12)  # one half-life later
    0.5
    >>> round(decayed_weight(log_weight(3.0, 0.0, math.inf), 1e9, math.inf), 12)  # no decay
    3.0
    """
    # Clipped because logw carries ts/tau (about 1e4 for a 3-day half-life at epoch
    # seconds): a ref_ts far before the events would otherwise overflow to inf.
    x = np.asarray(logw, dtype=np.float64) - _time_term(ref_ts, half_life_s)
    out = np.exp(np.minimum(x, _MAX_EXP))
    return float(out) if np.ndim(out) == 0 else out  # type: ignore[return-value]


def _time_term(ts: np.ndarray | float, half_life_s: float) -> np.ndarray | float:
    # Written ts * ln2 / half_life (not ts / tau) to be bit-identical to the feature
    # store's writer: the ts terms of a write and of its read-back cancel exactly.
    if not decays(half_life_s):
        return 0.0
    return np.asarray(ts, dtype=np.float64) * LN2 / half_life_s


@dataclass
class Interactions:
    """Users × items weights (already decayed), rows/cols named by the id lists."""

    user_ids: list[str]
    item_ids: list[str]
    matrix: sp.csr_matrix


def build_interactions(rows: Iterable[tuple[str, str, float]],
                       item_ids: Sequence[str] | None = None) -> Interactions:
    """Sum ``(user, item, weight)`` rows into a CSR matrix with deterministic ids.

    Users are sorted; items follow ``item_ids`` when given (so a matrix lines up with an
    existing model), unseen items appended sorted. Zero sums are dropped: for ALS a stored
    zero would still be a (negative) observation, which is not what "no weight" means.

    >>> inter = build_interactions([("u2", "b", 1.0), ("u1", "a", 2.0), ("u2", "b", 0.5)])
    >>> inter.user_ids, inter.item_ids, inter.matrix.toarray().tolist()
    (['u1', 'u2'], ['a', 'b'], [[2.0, 0.0], [0.0, 1.5]])
    """
    users, items, weights = _columns(rows)
    user_ids, user_codes = _sorted_codes(users)
    item_vocab, item_codes = _vocab_codes(items, item_ids)
    # Summed in float64 (COO → CSR adds duplicates) so row order cannot change the result
    # through float32 rounding, then stored as float32 as implicit wants.
    coo = sp.coo_matrix((weights, (user_codes, item_codes)),
                        shape=(len(user_ids), len(item_vocab)))
    matrix = coo.tocsr()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return Interactions(user_ids, item_vocab, matrix.astype(np.float32))


def interactions_from_histories(histories: Mapping[str, tuple[Sequence[str], np.ndarray]],
                                ref_ts: float, half_life_s: float) -> Interactions:
    """The matrix of per-customer histories ``{user: (items, forward-decayed log weights)}``
    as of ``ref_ts``: the same as :func:`build_interactions` on their rows, built with
    array operations (the full retrain reads 10⁵–10⁸ of them).

    >>> h = {"u2": (["b", "a"], np.log([1.0, 2.0])), "u1": (["a"], np.log([3.0]))}
    >>> inter = interactions_from_histories(h, 0.0, math.inf)
    >>> inter.user_ids, inter.item_ids, inter.matrix.toarray().tolist()
    (['u1', 'u2'], ['a', 'b'], [[3.0, 0.0], [2.0, 1.0]])
    """
    users = sorted(u for u, (items, _) in histories.items() if len(items))
    if not users:
        return Interactions([], [], sp.csr_matrix((0, 0), dtype=np.float32))
    lengths = np.fromiter((len(histories[u][0]) for u in users), np.int64, len(users))
    flat = [item for u in users for item in histories[u][0]]
    logw = np.concatenate([np.asarray(histories[u][1], dtype=np.float64) for u in users])
    item_ids, item_codes = _sorted_codes(flat)
    matrix = sp.csr_matrix(
        (decayed_weight(logw, ref_ts, half_life_s),
         (np.repeat(np.arange(len(users)), lengths), item_codes)),
        shape=(len(users), len(item_ids)))
    matrix.sum_duplicates()  # as COO → CSR would: an item twice in one history adds up
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return Interactions(users, item_ids, matrix.astype(np.float32))


def _columns(rows: Iterable[tuple[str, str, float]]) -> tuple[list[str], list[str], np.ndarray]:
    users: list[str] = []
    items: list[str] = []
    weights: list[float] = []
    for user, item, weight in rows:
        users.append(user)
        items.append(item)
        weights.append(weight)
    return users, items, np.asarray(weights, dtype=np.float64)


def _sorted_codes(values: list[str]) -> tuple[list[str], np.ndarray]:
    vocab = sorted(set(values))
    index = {v: i for i, v in enumerate(vocab)}
    return vocab, np.fromiter((index[v] for v in values), np.int64, len(values))


def _vocab_codes(values: list[str], fixed: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    if fixed is None:
        return _sorted_codes(values)
    vocab = list(fixed)
    index = {v: i for i, v in enumerate(vocab)}
    if len(index) != len(vocab):
        raise ValueError("item_ids has duplicates")
    for extra in sorted(set(values) - index.keys()):
        index[extra] = len(vocab)
        vocab.append(extra)
    return vocab, np.fromiter((index[v] for v in values), np.int64, len(values))
