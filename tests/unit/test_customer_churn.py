"""BG/NBD churn risk: known answers, the x = 0 quirk, and parameter recovery from simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.churn import (
    bgnbd_log_likelihood,
    customer_rhythm,
    expected_purchases,
    fit_bgnbd,
    p_alive,
    rhythms,
)
from models.customer_types import BGNBDParams, CustomerFacts

DAY = 86400.0
# CDNOW's estimates in FHL 2005 (r=0.243, α=4.414, a=0.793, b=2.426), rounded.
TRUE = BGNBDParams(r=0.25, alpha=4.0, a=0.8, b=2.4)


def simulate(n: int, params: BGNBDParams, seed: int, holdout: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD customers, first order at 0, watched for T ~ U(26, 78) weeks.

    Returns x, t_x, T and the purchases made in (T, T + holdout].
    """
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params.r, 1 / params.alpha, n)
    drop = rng.beta(params.a, params.b, n)
    big_t = rng.uniform(26, 78, n)
    x, t_x, future = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > big_t[i] + holdout:
                break
            if t > big_t[i]:
                future[i] += 1
            else:
                x[i] += 1
                t_x[i] = t
            if rng.random() < drop[i]:
                break
    return x, t_x, big_t, future


def test_p_alive_known_answer() -> None:
    # a/(b+x-1) ((α+T)/(α+t_x))^(r+x) = 1/2 * (4/2)^2 = 2  ->  P(alive) = 1/3
    got = p_alive(BGNBDParams(1.0, 1.0, 1.0, 2.0), np.array([1.0]), np.array([1.0]),
                  np.array([3.0]))
    assert got[0] == pytest.approx(1 / 3)


def test_p_alive_is_one_for_one_time_buyers() -> None:
    # The quirk: dropout happens only after a repeat purchase, so x = 0 is "alive" forever.
    got = p_alive(TRUE, np.zeros(3), np.zeros(3), np.array([0.0, 10.0, 1000.0]))
    assert got.tolist() == [1.0, 1.0, 1.0]


def test_p_alive_falls_with_silence_and_rises_with_a_late_last_order() -> None:
    x = np.full(3, 4.0)
    by_t = p_alive(TRUE, x, np.full(3, 10.0), np.array([12.0, 20.0, 40.0]))
    by_tx = p_alive(TRUE, x, np.array([5.0, 10.0, 19.0]), np.full(3, 20.0))
    assert by_t[0] > by_t[1] > by_t[2]
    assert by_tx[0] < by_tx[1] < by_tx[2]
    # Bought just now: only the dropout right after this purchase remains, a/(b+x-1).
    just_now = p_alive(TRUE, np.array([4.0]), np.array([20.0]), np.array([20.0]))[0]
    assert just_now == pytest.approx(1 / (1 + 0.8 / 5.4))


def test_log_likelihood_of_a_one_time_buyer() -> None:
    # x = 0: L = (α/(α+T))^r
    ll = bgnbd_log_likelihood(0.5, 2.0, 0.7, 1.5, np.array([0.0]), np.array([0.0]),
                              np.array([6.0]))
    assert ll[0] == pytest.approx(0.5 * math.log(2.0 / 8.0))


def test_fit_recovers_known_parameters() -> None:
    # How long the fit takes is benchmarks' business (eval_customer), not a test's.
    x, t_x, big_t, _ = simulate(4000, TRUE, seed=3)
    fit = fit_bgnbd(x, t_x, big_t)
    assert fit.r == pytest.approx(TRUE.r, rel=0.15)
    assert fit.alpha == pytest.approx(TRUE.alpha, rel=0.15)
    assert fit.a == pytest.approx(TRUE.a, rel=0.35)
    assert fit.b == pytest.approx(TRUE.b, rel=0.35)
    assert fit.a / (fit.a + fit.b) == pytest.approx(TRUE.a / (TRUE.a + TRUE.b), rel=0.1)

    def total(p: BGNBDParams) -> float:
        return float(bgnbd_log_likelihood(p.r, p.alpha, p.a, p.b, x, t_x, big_t).sum())

    assert total(fit) >= total(TRUE)  # the optimum, not just close to it
    assert fit == fit_bgnbd(x, t_x, big_t)  # deterministic


def test_expected_purchases_match_simulation() -> None:
    x, t_x, big_t, future = simulate(6000, TRUE, seed=7, holdout=26.0)
    predicted = expected_purchases(TRUE, 26.0, x, t_x, big_t)
    assert predicted.mean() == pytest.approx(future.mean(), rel=0.1)
    # One-time buyers: p_alive says nothing, expected purchases still fall with T.
    e = expected_purchases(TRUE, 13.0, np.zeros(2), np.zeros(2), np.array([5.0, 50.0]))
    assert e[0] > e[1] > 0


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="t_x <= T"):
        fit_bgnbd(np.array([1.0]), np.array([5.0]), np.array([4.0]))
    with pytest.raises(ValueError, match="non-empty"):
        fit_bgnbd(np.array([]), np.array([]), np.array([]))


def test_rhythm_of_customers() -> None:
    f = CustomerFacts("u", None, None, first_order_ts=0.0, last_order_ts=7 * DAY, orders=3,
                      monetary=1.0)
    assert customer_rhythm(f, 21 * DAY, unit_days=1.0) == (2.0, 7.0, 21.0)
    x, t_x, big_t = rhythms([f, f], 14 * DAY)
    assert x.tolist() == [2.0, 2.0] and t_x.tolist() == [1.0, 1.0] and big_t.tolist() == [2, 2]
    with pytest.raises(ValueError, match="no orders"):
        customer_rhythm(CustomerFacts("p", 0.0, 0.0, None, None, 0, 0.0), 1.0)
