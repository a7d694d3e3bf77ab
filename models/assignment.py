"""Deterministic, sticky experiment assignment: pure functions, no state, no I/O.

A customer's bucket in an experiment is ``sha256(salt:user_id) mod 10000``; every API
replica computes the same one, so nothing is shared or stored to assign. Two hashes are
used, for two questions:

* **Is the customer in the experiment?** The *layer* hash (salt = the layer name) puts
  each customer in one bucket of the layer; an experiment owns the slice
  ``layer_range = [lo, hi)`` of it. Experiments of one layer own disjoint slices, so they
  are mutually exclusive; layers hash with different salts, so they are independent.
* **Which variant?** The *experiment* hash (salt = the experiment's salt, by default its
  id) maps to contiguous ranges of the 10000 buckets, one per variant in the order they
  are listed, sized by weight.

The reshuffle rule: a customer's buckets never change. Changing weights only moves the
customers whose bucket lies in a range that changed owner (50/50 → 60/40 moves the 10% in
``[5000, 6000)`` from B to A; nobody else moves). Analysis keeps every customer in the
variant of their *first* exposure (and counts the moved ones); for a clean new split,
start a new experiment or give it a new salt.

>>> bucket("exp-1", "17850")
9114
>>> variant_for([("a", 1.0), ("b", 1.0)], 4999), variant_for([("a", 1.0), ("b", 1.0)], 5000)
('a', 'b')
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(salt: str, user_id: str) -> int:
    """The customer's bucket in ``[0, 10000)`` for this salt."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def variant_ranges(weights: Sequence[tuple[str, float]]) -> list[tuple[str, int, int]]:
    """Each variant's bucket range ``[lo, hi)``, in listed order, sized by weight.

    >>> variant_ranges([("control", 2), ("blend", 1), ("deep", 1)])
    [('control', 0, 5000), ('blend', 5000, 7500), ('deep', 7500, 10000)]
    """
    total = sum(w for _, w in weights)
    if total <= 0:
        raise ValueError("weights must add up to more than 0")
    out, cum, lo = [], 0.0, 0
    for name, w in weights:
        cum += w
        hi = BUCKETS if name == weights[-1][0] else round(BUCKETS * cum / total)
        out.append((name, lo, hi))
        lo = hi
    return out


def variant_for(weights: Sequence[tuple[str, float]], b: int) -> str:
    for name, lo, hi in variant_ranges(weights):
        if lo <= b < hi:
            return name
    raise ValueError(f"bucket {b} outside [0, {BUCKETS})")  # pragma: no cover


def in_layer_range(layer: str, user_id: str, lo: int, hi: int) -> bool:
    """Whether the customer falls in the experiment's slice of its layer."""
    return lo <= bucket(f"layer:{layer}", user_id) < hi


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Two layer slices share buckets (experiments of one layer must not).

    >>> overlaps((0, 5000), (5000, 10000)), overlaps((0, 5001), (5000, 10000))
    (False, True)
    """
    return a[0] < b[1] and b[0] < a[1]
