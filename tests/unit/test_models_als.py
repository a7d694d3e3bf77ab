"""ALS conformance: fold-in against implicit's own solve, known answers, similarity, top-k."""

from __future__ import annotations

import warnings

import implicit.utils
import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from models.als import ALSParams, FoldIn, fit_als, similar_items
from models.matrix import Interactions, build_interactions
from models.scoring import blend, score_items, top_k

PARAMS = ALSParams(factors=8, regularization=0.05, iterations=6, alpha=4.0, seed=7)
# Enough ridge that 4 factors cannot fit the noise inside a block (holds for 30 seeds).
BLOCK_PARAMS = ALSParams(factors=4, regularization=2.0, iterations=15)


def random_interactions(users: int = 120, items: int = 60, per_user: int = 8,
                        seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    rows = [(f"u{u:03d}", f"i{i:03d}", float(rng.uniform(0.1, 3.0)))
            for u in range(users) for i in rng.choice(items, per_user, replace=False)]
    return build_interactions(rows)


def two_blocks(users: int = 80, items: int = 20) -> Interactions:
    """Users < half buy only items < half, the rest only the rest: a planted answer."""
    rng = np.random.default_rng(3)
    rows = []
    for u in range(users):
        block = range(items // 2) if u < users // 2 else range(items // 2, items)
        for i in rng.choice(list(block), 6, replace=False):
            rows.append((f"u{u:03d}", f"i{i:03d}", 1.0 + float(rng.random())))
    return build_interactions(rows)


def history(m: sp.csr_matrix, u: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = m.indptr[u], m.indptr[u + 1]
    return m.indices[lo:hi], m.data[lo:hi]


@pytest.fixture(scope="module")
def fitted() -> tuple[Interactions, np.ndarray, np.ndarray]:
    inter = random_interactions()
    users, items = fit_als(inter, PARAMS)
    return inter, users, items


def implicit_user_solve(items: np.ndarray, matrix: sp.csr_matrix, params: ALSParams,
                        ) -> np.ndarray:
    """implicit's own exact user solve (Cholesky) against fixed item factors."""
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=items.shape[1],
                                        regularization=params.regularization,
                                        alpha=params.alpha, dtype=np.float32)
        model.item_factors = items.copy()
        model.user_factors = np.zeros((matrix.shape[0], items.shape[1]), dtype=np.float32)
        return model.recalculate_user(np.arange(matrix.shape[0]), matrix)


@pytest.mark.parametrize("alpha", [4.0, 0.5, 1.0])
def test_fold_in_equals_implicits_user_solve(fitted, alpha: float) -> None:  # type: ignore[no-untyped-def]
    inter, _, items = fitted
    params = ALSParams(regularization=PARAMS.regularization, alpha=alpha)
    expected = implicit_user_solve(items, inter.matrix, params)
    fold = FoldIn(items, params.regularization, params.alpha)
    got = np.stack([fold.solve(*history(inter.matrix, u)) for u in range(len(inter.user_ids))])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)


def test_fold_in_with_large_regularization_still_matches(fitted) -> None:  # type: ignore[no-untyped-def]
    # A large lambda makes an unscaled-vs-scaled regularization mix-up obvious.
    inter, _, items = fitted
    params = ALSParams(regularization=5.0, alpha=PARAMS.alpha)
    expected = implicit_user_solve(items, inter.matrix, params)
    fold = FoldIn(items, params.regularization, params.alpha)
    got = fold.solve_many([history(inter.matrix, u) for u in range(len(inter.user_ids))])
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max(), rtol=0)


def test_solve_many_equals_one_by_one_and_empty_is_zero(fitted) -> None:  # type: ignore[no-untyped-def]
    inter, _, items = fitted
    fold = FoldIn(items, PARAMS.regularization, PARAMS.alpha)
    hists = [history(inter.matrix, u) for u in range(10)]
    hists.append((np.array([], dtype=np.int64), np.array([])))
    batch = fold.solve_many(hists)
    assert batch.dtype == np.float32 and batch.shape == (11, PARAMS.factors)
    for row, (idx, w) in zip(batch, hists, strict=True):
        np.testing.assert_allclose(row, fold.solve(idx, w), rtol=1e-6, atol=1e-9)
    assert not batch[-1].any()


@pytest.mark.parametrize("alpha,regularization", [(4.0, 0.05), (40.0, 0.01), (0.5, 1.0)])
def test_stacked_fold_in_equals_the_k_by_k_solve(alpha: float, regularization: float) -> None:
    # Histories of every length from 1 to past the stacked limit (so every padded width
    # and the per-customer path), in shuffled order, with zero and negative weights (a
    # negative entry: preference 0, confidence |C|), against one solve per customer.
    from models.als import STACKED_MAX_ITEMS
    rng = np.random.default_rng(11)
    items = (rng.standard_normal((500, 24)) * rng.exponential(0.3, (500, 1))).astype(np.float32)
    fold = FoldIn(items, regularization, alpha)
    lengths = rng.permutation(np.repeat(np.arange(1, STACKED_MAX_ITEMS + 9), 3))
    hists = [(rng.choice(500, n, replace=False),
              rng.exponential(2.0, n) * rng.choice([1.0, 1.0, 0.0, -1.0], n)) for n in lengths]
    got = fold.solve_many(hists)
    want = np.stack([fold.solve(idx, w) for idx, w in hists])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_stacked_fold_in_rejects_non_finite_weights() -> None:
    items = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    fold = FoldIn(items, 0.05, 4.0)
    with pytest.raises(ValueError):
        fold.solve_many([(np.array([1, 2]), np.array([1.0, np.inf]))])


def test_same_seed_same_factors_other_seed_differs() -> None:
    inter = random_interactions(users=60, items=30)
    a, b = fit_als(inter, PARAMS), fit_als(inter, PARAMS)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    other = fit_als(inter, ALSParams(**{**vars(PARAMS), "seed": PARAMS.seed + 1}))
    assert not np.array_equal(a[1], other[1])
    assert a[0].dtype == a[1].dtype == np.float32
    assert a[1].shape == (30, PARAMS.factors)


def test_fit_pins_blas_threads_so_implicit_does_not_warn(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # implicit checks once per process; make it check again here. (pyproject also ignores
    # that warning, so record it rather than rely on filterwarnings=error.)
    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_als(random_interactions(users=20, items=10, per_user=3), PARAMS)
    assert [str(w.message) for w in caught] == []


def test_fold_in_ranks_the_users_own_block_first() -> None:
    inter = two_blocks()
    _, items = fit_als(inter, BLOCK_PARAMS)
    fold = FoldIn(items, BLOCK_PARAMS.regularization, BLOCK_PARAMS.alpha)
    idx, w = history(inter.matrix, 0)  # a block-A user
    held = np.ones(len(inter.item_ids), dtype=bool)
    held[idx[:3]] = False  # fold in 3 of their items, hold the rest out
    vec = fold.solve(idx[:3], w[:3])
    best, _ = top_k(score_items(vec, items), 7, exclude=~held)
    assert set(best.tolist()) <= set(range(10))  # all 7 other block-A items, no block-B one
    assert set(idx[3:].tolist()) <= set(best.tolist())


def test_similar_items_never_self_and_stays_in_block() -> None:
    inter = two_blocks()
    _, items = fit_als(inter, BLOCK_PARAMS)
    ids, scores = similar_items(items, 5)
    n = len(inter.item_ids)
    assert ids.shape == scores.shape == (n, 5)
    assert ids.dtype == np.int32 and scores.dtype == np.float32
    assert not (ids == np.arange(n)[:, None]).any()
    block = np.arange(n) // (n // 2)
    assert (block[ids] == block[:, None]).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    # symmetric-ish: most neighbour relations hold both ways
    pairs = {(i, int(j)) for i in range(n) for j in ids[i]}
    assert sum((j, i) in pairs for i, j in pairs) / len(pairs) > 0.6


def test_similar_items_blocks_do_not_change_the_answer() -> None:
    items = np.random.default_rng(5).standard_normal((50, 6)).astype(np.float32)
    items[7] = 0.0  # a never-trained item: cosine 0 everywhere, many ties
    whole = similar_items(items, 10)
    tiny = similar_items(items, 10, block_bytes=4 * 50 * 3)  # 3 rows per block
    np.testing.assert_array_equal(whole[0], tiny[0])
    np.testing.assert_array_equal(whole[1], tiny[1])
    # the zero vector scores 0 against all: ties by index, skipping itself
    assert whole[0][7].tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]


def test_similar_items_with_fewer_items_than_k() -> None:
    ids, scores = similar_items(np.eye(3, dtype=np.float32), 10)
    assert ids.shape == (3, 2)
    assert not (ids == np.arange(3)[:, None]).any()


def test_cosine_scores_match_a_direct_computation() -> None:
    items = np.random.default_rng(6).standard_normal((30, 5)).astype(np.float32)
    ids, scores = similar_items(items, 4)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    direct = unit @ unit.T
    np.fill_diagonal(direct, -np.inf)
    np.testing.assert_allclose(scores, np.sort(direct, axis=1)[:, ::-1][:, :4], rtol=1e-5)
    np.testing.assert_allclose(scores, np.take_along_axis(direct, ids.astype(int), 1), rtol=1e-5)


def test_top_k_breaks_ties_by_index_and_excludes() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.5, 0.1])
    idx, vals = top_k(scores, 4)
    assert idx.tolist() == [1, 3, 0, 2]
    assert vals.tolist() == [0.9, 0.9, 0.5, 0.5]
    idx, _ = top_k(scores, 3, exclude=scores > 0.8)
    assert idx.tolist() == [0, 2, 4]
    batch, _ = top_k(np.stack([scores, scores[::-1]]), 2)
    assert batch.tolist() == [[1, 3], [2, 4]]


def test_blend_normalises_each_source_by_its_max() -> None:
    out = blend(({"a": 10.0, "b": 5.0}, 1.0), ({"b": 2.0, "c": -1.0}, 2.0), ({"z": 0.0}, 9.0))
    assert out == {"b": 2.5, "a": 1.0, "c": 0.0}
    assert list(out) == ["b", "a", "c"]


def test_similar_items_among_candidates_match_a_direct_computation() -> None:
    items = np.random.default_rng(8).standard_normal((40, 5)).astype(np.float32)
    cand = np.array([1, 4, 5, 9, 20, 21, 33, 39])
    ids, scores = similar_items(items, 3, candidates=cand, block_bytes=4 * 8 * 7)
    assert ids.shape == (40, 3)
    assert set(ids.ravel().tolist()) <= set(cand.tolist())
    assert not (ids == np.arange(40)[:, None]).any()  # a candidate is never its own
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    direct = np.full((40, 40), -np.inf, dtype=np.float32)
    direct[:, cand] = (unit @ unit.T)[:, cand]
    np.fill_diagonal(direct, -np.inf)
    np.testing.assert_allclose(scores, np.sort(direct, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    np.testing.assert_allclose(scores, np.take_along_axis(direct, ids.astype(int), 1), rtol=1e-5)
    # every item a candidate: the same answer as no restriction
    full = similar_items(items, 3)
    np.testing.assert_array_equal(similar_items(items, 3, candidates=np.arange(40))[0], full[0])
