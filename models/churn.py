"""Churn risk with the BG/NBD model: is a customer still buying, from the rhythm of orders.

Fader, Hardie & Lee (2005), "'Counting Your Customers' the Easy Way: An Alternative to
the Pareto/NBD Model", Marketing Science 24(2). While active, a customer buys as a
Poisson process with rate λ ~ Gamma(r, α); after each purchase they drop out for good
with probability p ~ Beta(a, b). A customer is summarised by their *rhythm*:

- ``x``   repeat purchases (orders − 1),
- ``t_x`` time of the last order, counted from the first order,
- ``T``   time from the first order to the clock,

all in ``time_unit_days`` units (weeks by default, as in the paper).

The quirk of the model: dropping out can only happen right *after* a repeat purchase, so a
customer with ``x = 0`` has never had the chance and P(alive) is exactly 1 however long
ago they bought (FHL 2005, eq. 13, the ``δ_{x>0}`` term). Segment and lifecycle rules
therefore judge one-time buyers by recency in days, not by ``p_alive``
(see ``aisle/segments.default.toml``); :func:`expected_purchases` does rank them (it
falls with ``T``), and the evaluation script reports it next to ``p_alive``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import betaln, expit, gammaln, hyp2f1

from models.customer_types import BGNBDParams, CustomerFacts

__all__ = ["bgnbd_log_likelihood", "customer_rhythm", "expected_purchases", "fit_bgnbd",
           "p_alive", "rhythms"]

DAY_S = 86400.0
# Log-parameters are kept in a box so a flat likelihood cannot run the optimiser to
# exp(±700); e^±12 is far outside any parameter a shop's data supports.
_LOG_BOUND = 12.0


def customer_rhythm(facts: CustomerFacts, clock: float,
                    unit_days: float = 7.0) -> tuple[float, float, float]:
    """``(x, t_x, T)`` of one customer at ``clock``; ``ValueError`` without orders.

    >>> f = CustomerFacts("u", None, None, first_order_ts=0.0, last_order_ts=14 * DAY_S,
    ...                   orders=3, monetary=10.0)
    >>> customer_rhythm(f, clock=28 * DAY_S)
    (2.0, 2.0, 4.0)
    """
    if facts.orders < 1 or facts.first_order_ts is None or facts.last_order_ts is None:
        raise ValueError(f"customer {facts.user_id} has no orders: no rhythm")
    unit = unit_days * DAY_S
    first = facts.first_order_ts
    t_x = max(facts.last_order_ts - first, 0.0) / unit
    big_t = max(clock - first, 0.0) / unit
    return float(facts.orders - 1), t_x, max(big_t, t_x)


def rhythms(customers: Sequence[CustomerFacts], clock: float,
            unit_days: float = 7.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`customer_rhythm` for many customers (all with orders), as three arrays."""
    rows = np.array([customer_rhythm(f, clock, unit_days) for f in customers],
                    dtype=np.float64).reshape(-1, 3)
    return rows[:, 0], rows[:, 1], rows[:, 2]


def bgnbd_log_likelihood(r: float, alpha: float, a: float, b: float, x: np.ndarray,
                         t_x: np.ndarray, big_t: np.ndarray) -> np.ndarray:
    """Per-customer log-likelihood, FHL 2005 eq. 6, in log space.

    ln L = lnΓ(r+x) − lnΓ(r) + r ln α
           + ln[ B(a, b+x)/B(a, b) (α+T)^−(r+x) + δ_{x>0} B(a+1, b+x−1)/B(a, b) (α+t_x)^−(r+x) ]
    """
    x = np.asarray(x, dtype=np.float64)
    repeat = x > 0
    head = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    stay = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + big_t)
    # b + x − 1 is only meaningful for x ≥ 1; feed a harmless value for x = 0.
    dropped = (betaln(a + 1, b + np.where(repeat, x, 1.0) - 1) - betaln(a, b)
               - (r + x) * np.log(alpha + t_x))
    return head + np.logaddexp(stay, np.where(repeat, dropped, -np.inf))


def fit_bgnbd(x: np.ndarray, t_x: np.ndarray, big_t: np.ndarray,
              time_unit_days: float = 7.0) -> BGNBDParams:
    """Maximum-likelihood (r, α, a, b) over customers' rhythms, in ``time_unit_days`` units.

    Optimised over log-parameters (positivity for free) with L-BFGS-B, starting at 1.
    Deterministic: no random restarts.
    """
    x, t_x, big_t = (np.asarray(v, dtype=np.float64) for v in (x, t_x, big_t))
    if not (x.shape == t_x.shape == big_t.shape) or x.size == 0:
        raise ValueError("x, t_x and T must be non-empty arrays of one shape")
    if (x < 0).any() or (t_x < 0).any() or (big_t < t_x).any():
        raise ValueError("need x >= 0 and 0 <= t_x <= T")
    # Customers with the same rhythm weigh once each: fewer terms, same optimum.
    rows, weights = np.unique(np.stack([x, t_x, big_t], axis=1), axis=0, return_counts=True)
    n = weights.sum()

    def loss(log_params: np.ndarray) -> float:
        r, alpha, a, b = np.exp(log_params)
        ll = bgnbd_log_likelihood(r, alpha, a, b, rows[:, 0], rows[:, 1], rows[:, 2])
        return float(-(weights * ll).sum() / n)

    result = minimize(loss, np.zeros(4), method="L-BFGS-B",
                      bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 4)
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BGNBDParams(r=r, alpha=alpha, a=a, b=b, time_unit_days=time_unit_days)


def _log_dropout_odds(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray,
                      big_t: np.ndarray) -> np.ndarray:
    """ln[a/(b+x−1) ((α+T)/(α+t_x))^(r+x)] for x > 0, −∞ for x = 0."""
    p = params
    repeat = x > 0
    odds = (np.log(p.a) - np.log(p.b + np.where(repeat, x, 1.0) - 1)
            + (p.r + x) * (np.log(p.alpha + big_t) - np.log(p.alpha + t_x)))
    return np.where(repeat, odds, -np.inf)


def p_alive(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray,
            big_t: np.ndarray) -> np.ndarray:
    """P(still active | x, t_x, T), FHL 2005 eq. 13; exactly 1 where x = 0 (see module doc).

    >>> params = BGNBDParams(r=1.0, alpha=1.0, a=1.0, b=2.0)
    >>> p_alive(params, np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([3.0, 30.0]))
    array([0.33333333, 1.        ])
    """
    x, t_x, big_t = (np.asarray(v, dtype=np.float64) for v in (x, t_x, big_t))
    return expit(-_log_dropout_odds(params, x, t_x, big_t))


def expected_purchases(params: BGNBDParams, t: float, x: np.ndarray, t_x: np.ndarray,
                       big_t: np.ndarray) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T], FHL 2005 eq. 10 (``t`` in time units).

    (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) ₂F₁(r+x, b+x; a+b+x−1; t/(α+T+t))]
    · P(alive). Unlike ``p_alive`` it falls with T for one-time buyers. Needs a ≠ 1.
    """
    x, t_x, big_t = (np.asarray(v, dtype=np.float64) for v in (x, t_x, big_t))
    p = params
    if abs(p.a - 1.0) < 1e-9:
        raise ValueError("expected_purchases needs a != 1 (the closed form divides by a-1)")
    span = p.alpha + big_t + t
    hyper = hyp2f1(p.r + x, p.b + x, p.a + p.b + x - 1, t / span)
    bracket = 1.0 - np.exp((p.r + x) * np.log((p.alpha + big_t) / span)) * hyper
    alive = expit(-_log_dropout_odds(p, x, t_x, big_t))
    return (p.a + p.b + x - 1) / (p.a - 1) * bracket * alive
