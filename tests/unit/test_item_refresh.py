"""Item refresh between retrains: the item analogue of the user fold-in."""

from __future__ import annotations

import doctest

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from models import train
from models.als import ALSParams, fit_als
from models.artifacts import ModelArtifact
from models.matrix import build_interactions, log_weight
from models.online import refresh_item_factors
from models.train import touched_since


def stale_and_now() -> tuple[ModelArtifact, object, object]:
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{i}", float(rng.integers(1, 4)))
            for u in range(60) for i in rng.choice(25, 6, replace=False)]
    before = build_interactions(rows)
    params = ALSParams(factors=8, regularization=0.1, iterations=5, alpha=2.0, seed=1)
    with threadpool_limits(1, "blas"):
        _, factors = fit_als(before, params)
    art = ModelArtifact(version="v1", created_at=0.0, ref_ts=0.0, params=vars(params).copy(),
                        item_ids=list(before.item_ids), item_factors=factors,
                        similar_ids=np.zeros((len(factors), 1), dtype=np.int32),
                        similar_scores=np.zeros((len(factors), 1), dtype=np.float32),
                        consumable=np.zeros(len(factors), dtype=bool))
    # Since the retrain: i0 sold to 30 more customers, and a brand-new item appeared.
    later = rows + [(f"u{u}", "i0", 3.0) for u in range(30)] + [("u1", "brand_new", 1.0)]
    return art, before, build_interactions(later)


def test_touched_items_are_re_solved_as_implicit_would_and_the_others_kept() -> None:
    art, _, now = stale_and_now()
    factors, n = refresh_item_factors(art, now, {"i0", "brand_new"})
    assert n == 1  # the model does not know brand_new: nothing to refresh
    j = art.item_index["i0"]
    assert not np.allclose(factors[j], art.item_factors[j])
    others = [k for k in range(len(art.item_ids)) if k != j]
    assert np.array_equal(factors[others], art.item_factors[others])
    # implicit's own item solve, given the same user factors (every customer folded in).
    cols = np.array([art.item_index.get(i, -1) for i in now.item_ids])
    x = now.matrix.tocsr()
    known = np.where(cols >= 0)[0]
    hist = [(cols[x.indices[x.indptr[u]:x.indptr[u + 1]]],
             x.data[x.indptr[u]:x.indptr[u + 1]]) for u in range(x.shape[0])]
    users = art.fold_in().solve_many([(c[c >= 0], w[c >= 0]) for c, w in hist])
    model = AlternatingLeastSquares(factors=8, regularization=0.1, alpha=2.0,
                                    dtype=np.float32, num_threads=1)
    model.user_factors, model.item_factors = users, art.item_factors.copy()
    c0 = now.item_ids.index("i0")
    with threadpool_limits(1, "blas"):
        model.partial_fit_items(np.array([j]), x.T.tocsr()[[c0]])
    assert np.allclose(model.item_factors[j], factors[j], atol=1e-4)
    assert len(known) == len(art.item_ids)


def test_nothing_touched_changes_nothing() -> None:
    art, before, _ = stale_and_now()
    factors, n = refresh_item_factors(art, before, set())
    assert n == 0 and np.array_equal(factors, art.item_factors)


def test_touched_since_misses_no_item_an_event_after_the_model_touched() -> None:
    """Every pair an event after the model touched is at or above the floor, whatever
    came before; an item only touched before, lightly, is left alone."""
    half_life = 30 * 86400.0
    since = 1_300_000_000.0
    rng = np.random.default_rng(5)
    histories, touched_after = {}, set()
    for u in range(12):
        items, logw = [], []
        for i in rng.choice(30, 5, replace=False):
            ts = since + float(rng.uniform(-90, 5)) * 86400
            weights = [float(w) for w in rng.choice([1.0, 3.0, 10.0], rng.integers(1, 4))]
            lw = log_weight(weights[0], ts, half_life)
            for w in weights[1:]:
                lw = float(np.logaddexp(lw, log_weight(w, ts - 3600, half_life)))
            items.append(f"i{i}")
            logw.append(lw)
            if ts >= since:  # its newest event came after the model
                touched_after.add(f"i{i}")
        histories[f"u{u}"] = (items, np.array(logw))
    got = touched_since(histories, since, half_life, 1.0)
    assert touched_after <= got
    assert touched_after and got != {f"i{i}" for i in range(30)}  # a real selection
    only_old = {"v": (["old"], np.array([log_weight(1.0, since - 86400, half_life)]))}
    assert touched_since(only_old, since, half_life, 1.0) == set()
    assert doctest.testmod(train).failed == 0
