"""Decay transform and the interactions matrix."""

from __future__ import annotations

import doctest
import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feature_store.updates import forward_log_weight
from models import matrix, scoring
from models.matrix import build_interactions, decayed_weight, log_weight

DAY = 86400.0
NOW = 1.7e9  # epoch seconds: the forward term is large, as in production


@pytest.mark.parametrize("module", [matrix, scoring])
def test_doctests(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


def test_one_half_life_old_weighs_half() -> None:
    logw = log_weight(np.array([1.0, 1.0, 3.0]), np.array([NOW - 30 * DAY, NOW, NOW]), 30 * DAY)
    np.testing.assert_allclose(decayed_weight(logw, NOW, 30 * DAY), [0.5, 1.0, 3.0], rtol=1e-9)


def test_log_add_exp_sum_decays_like_the_sum() -> None:
    half = 7 * DAY
    total = np.logaddexp(log_weight(2.0, NOW - half, half), log_weight(1.0, NOW, half))
    assert decayed_weight(total, NOW + half, half) == pytest.approx((2.0 / 2 + 1.0) / 2)


@pytest.mark.parametrize("half_life", [0.0, -1.0, math.inf])
def test_no_decay(half_life: float) -> None:
    logw = log_weight(5.0, NOW, half_life)
    assert logw == pytest.approx(math.log(5.0))
    assert decayed_weight(logw, NOW + 1e6, half_life) == pytest.approx(5.0)


def test_scalar_in_scalar_out() -> None:
    assert isinstance(decayed_weight(0.0, 0.0, DAY), float)
    assert isinstance(log_weight(1.0, 0.0, DAY), float)


def test_no_overflow_far_from_the_reference() -> None:
    # A 1-hour half-life at epoch seconds puts ts/tau near 1.2e6: exp of that overflows.
    logw = log_weight(np.array([1.0]), np.array([NOW]), 3600.0)
    out = decayed_weight(logw, 0.0, 3600.0)  # pytest turns an overflow warning into an error
    assert np.isfinite(out).all()
    assert decayed_weight(logw, NOW + 3600.0 * 2000, 3600.0)[0] == 0.0


def test_matches_the_feature_store_writer_bit_for_bit() -> None:
    for w, ts, half in [(1.0, NOW, 30 * DAY), (2.5, NOW + 123.456, 120 * DAY), (3.0, NOW, 0.0)]:
        assert log_weight(w, ts, half) == forward_log_weight(w, ts, half)


def test_build_sums_duplicates_and_sorts_ids() -> None:
    inter = build_interactions([("u2", "x", 1.0), ("u1", "y", 2.0), ("u2", "x", 0.25),
                                ("u1", "x", 1.0)])
    assert inter.user_ids == ["u1", "u2"]
    assert inter.item_ids == ["x", "y"]
    assert inter.matrix.dtype == np.float32
    assert inter.matrix.toarray().tolist() == [[1.0, 2.0], [1.25, 0.0]]
    assert inter.matrix.has_canonical_format


def test_build_with_fixed_items_appends_unseen_sorted() -> None:
    inter = build_interactions([("u", "z", 1.0), ("u", "b", 1.0), ("u", "a", 1.0)],
                               item_ids=["b", "q"])
    assert inter.item_ids == ["b", "q", "a", "z"]
    assert inter.matrix.toarray().tolist() == [[1.0, 0.0, 1.0, 1.0]]


def test_build_drops_zero_sums_and_handles_nothing() -> None:
    inter = build_interactions([("u", "a", 1.0), ("u", "a", -1.0), ("u", "b", 2.0)])
    assert inter.matrix.nnz == 1
    empty = build_interactions([])
    assert empty.matrix.shape == (0, 0) and empty.user_ids == []


def test_build_rejects_duplicate_vocabulary() -> None:
    with pytest.raises(ValueError):
        build_interactions([("u", "a", 1.0)], item_ids=["a", "a"])


rows_strategy = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["a", "b", "c", "d"]),
              st.integers(1, 8).map(lambda n: n / 4)),
    max_size=30)


@given(rows=rows_strategy, seed=st.integers(0, 1000))
def test_build_is_order_independent(rows: list[tuple[str, str, float]], seed: int) -> None:
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    a, b = build_interactions(rows), build_interactions(shuffled)
    assert (a.user_ids, a.item_ids) == (b.user_ids, b.item_ids)
    assert (a.matrix != b.matrix).nnz == 0


def test_matrix_from_histories_equals_matrix_from_rows() -> None:
    from models.matrix import decayed_weight, interactions_from_histories

    rng = np.random.default_rng(3)
    half_life, ref = 30 * 86400.0, 1.3e9
    histories = {}
    for u in range(200):
        items = [f"i{j}" for j in rng.choice(60, int(rng.integers(1, 12)), replace=False)]
        # log weights as the store keeps them: near ref_ts / tau, so weights near 1
        histories[f"u{u:03d}"] = (items, ref * math.log(2) / half_life
                                  + rng.standard_normal(len(items)) * 3)
    histories["u_gone"] = ([], np.zeros(0))  # no interactions: no row, as with no rows
    rows = [(u, i, float(decayed_weight(w, ref, half_life)))
            for u, (items, logw) in histories.items() for i, w in zip(items, logw, strict=True)]
    want = build_interactions(rows)
    got = interactions_from_histories(histories, ref, half_life)
    assert got.item_ids == want.item_ids
    assert got.user_ids == want.user_ids == sorted(set(histories) - {"u_gone"})
    np.testing.assert_array_equal(got.matrix.indptr, want.matrix.indptr)
    np.testing.assert_array_equal(got.matrix.indices, want.matrix.indices)
    np.testing.assert_array_equal(got.matrix.data, want.matrix.data)  # bit-exact
    assert got.matrix.dtype == want.matrix.dtype == np.float32
    assert interactions_from_histories({}, ref, half_life).matrix.shape == (0, 0)
