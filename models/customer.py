"""Customer intelligence: RFM scores, segments, lifecycle, tiers and the assistant's profile.

Pure functions over :mod:`models.customer_types`; rules come from a TOML file
(``aisle/segments.default.toml`` documents every threshold). Churn risk (BG/NBD) lives in
:mod:`models.churn`, replenishment in :mod:`models.replenishment`; both are re-exported.

RFM refresh rule. Quintile edges are a property of the population, not of one customer:
the workers recompute :func:`rfm_thresholds` from every customer with an order and store
them in :class:`PopulationStats` every ``AISLE_WORKER__POPULATION_INTERVAL_S`` (default
300 s; :mod:`models.population`) and on ``aisle stats``; :func:`thresholds_stale` says
when a stored set no longer describes the population (one day of event time since
``as_of``, or 5% more or fewer customers with orders).
Between refreshes a customer is scored against the stored edges with recency measured at
the scoring clock, so a quiet customer's R score still falls day by day. Recency edges are
in days since the last order, which makes them comparable across clocks.
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from models.churn import customer_rhythm, expected_purchases, fit_bgnbd, p_alive, rhythms
from models.customer_types import (
    CustomerFacts,
    CustomerProfile,
    PopulationStats,
    RFMScore,
    RFMThresholds,
    TierStatus,
)
from models.replenishment import population_cycles, replenishments

__all__ = [
    "LIFECYCLE_STAGES", "SEGMENTS", "LifecycleRules", "ProfileRules", "SegmentRules",
    "TierRules", "build_profile", "customer_rhythm", "expected_purchases", "fit_bgnbd",
    "lifecycle_stage", "lifecycle_transitions", "load_segment_rules", "p_alive",
    "population_cycles", "replenishments", "rfm_thresholds", "rfm_values", "rhythms",
    "score_rfm", "segment", "thresholds_stale", "tier_status",
]

DAY_S = 86400.0
QUINTILES = (0.2, 0.4, 0.6, 0.8)
SEGMENTS = ("prospect", "new", "lost", "dormant", "at_risk", "high_value_loyal", "potential")
FALLBACK_SEGMENT = "regular"
LIFECYCLE_STAGES = ("prospect", "first_purchase", "growing", "mature", "at_risk", "churned",
                    "reactivated")

# ---------------------------------------------------------------- RFM


def rfm_values(customers: Sequence[CustomerFacts],
               clock: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recency_days, frequency, monetary)`` arrays of the customers with an order."""
    buyers = [f for f in customers if f.orders >= 1 and f.last_order_ts is not None]
    recency = [max(clock - f.last_order_ts, 0.0) / DAY_S for f in buyers]  # type: ignore[operator]
    return (np.asarray(recency, dtype=np.float64),
            np.asarray([f.orders for f in buyers], dtype=np.float64),
            np.asarray([f.monetary for f in buyers], dtype=np.float64))


def rfm_thresholds(recency_days: np.ndarray, frequency: np.ndarray, monetary: np.ndarray,
                   as_of: float) -> RFMThresholds:
    """Quintile edges (20/40/60/80%) over customers with ≥1 order; no edges if none.

    Ties make equal edges (when half the customers bought once, F edges start 1, 1, …)
    and then some scores are simply not used; scoring stays well defined.

    >>> t = rfm_thresholds(np.arange(1.0, 11), np.array([1, 1, 1, 1, 1, 2, 2, 3, 5, 9]),
    ...                    np.arange(10.0, 110, 10), as_of=0.0)
    >>> t.recency_days, t.frequency, t.customers
    ((2.8, 4.6, 6.4, 8.2), (1.0, 1.0, 2.0, 3.4), 10)
    """
    r, f, m = (np.asarray(v, dtype=np.float64) for v in (recency_days, frequency, monetary))
    keep = (f >= 1) & np.isfinite(r) & np.isfinite(m)
    if not keep.any():
        return RFMThresholds((), (), (), as_of=as_of, customers=0)

    def edges(values: np.ndarray) -> tuple[float, ...]:
        return tuple(round(float(e), 6) for e in np.quantile(values[keep], QUINTILES))

    return RFMThresholds(edges(r), edges(f), edges(m), as_of=as_of, customers=int(keep.sum()))


def thresholds_stale(thresholds: RFMThresholds, clock: float, customers: int,
                     max_age_days: float = 1.0, max_change: float = 0.05) -> bool:
    """Whether the refresh rule (module docstring) asks for new thresholds."""
    if clock - thresholds.as_of >= max_age_days * DAY_S:
        return True
    return abs(customers - thresholds.customers) > max_change * max(thresholds.customers, 1)


def _quintile(value: float, edges: tuple[float, ...], higher_is_better: bool) -> int:
    """1..5; a value on an edge belongs to the lower bin. No edges: the middle, 3."""
    if not edges:
        return 3
    above = sum(e < value for e in edges)
    return 1 + above if higher_is_better else 5 - above


def score_rfm(facts: CustomerFacts, thresholds: RFMThresholds, clock: float) -> RFMScore | None:
    """R, F, M scores 1..5 (fewer days since the last order → higher R); None if no order."""
    if facts.orders < 1 or facts.last_order_ts is None:
        return None
    recency = max(clock - facts.last_order_ts, 0.0) / DAY_S
    return RFMScore(recency_days=recency, frequency=facts.orders, monetary=facts.monetary,
                    r=_quintile(recency, thresholds.recency_days, higher_is_better=False),
                    f=_quintile(facts.orders, thresholds.frequency, higher_is_better=True),
                    m=_quintile(facts.monetary, thresholds.monetary, higher_is_better=True))


# ---------------------------------------------------------------- rules (TOML)


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    at_risk_after_days: float
    churned_after_days: float
    at_risk_p_alive: float
    churned_p_alive: float
    mature_min_orders: int
    mature_min_days: float


@dataclass(frozen=True, slots=True)
class TierRules:
    levels: tuple[tuple[str, float], ...]   # (name, min spend), ascending
    window_days: float
    currency: str


@dataclass(frozen=True, slots=True)
class ProfileRules:
    price_low_below: float
    price_high_from: float
    top_categories: int
    replenish_due_within_days: float
    max_overdue_intervals: float


@dataclass(frozen=True, slots=True)
class SegmentRules:
    """Everything in the rules file; each field is documented there."""

    precedence: tuple[str, ...]
    new_within_days: float
    lost_after_days: float
    lost_p_alive: float
    dormant_after_days: float
    dormant_p_alive: float
    at_risk_max_r: int
    at_risk_min_f_or_m: int
    at_risk_p_alive: float
    loyal_min_score: int
    rising_window_days: float
    potential_min_recent_orders: int
    lifecycle: LifecycleRules
    tiers: TierRules
    profile: ProfileRules


def _fields(table: dict[str, Any], where: str, cls: type, skip: tuple[str, ...] = ()
            ) -> dict[str, Any]:
    """The table's values for ``cls``'s fields, typed; unknown or missing keys fail."""
    names = [f.name for f in fields(cls) if f.name not in skip]
    unknown, missing = set(table) - set(names), set(names) - set(table)
    if unknown or missing:
        raise ValueError(f"[{where}]: unknown keys {sorted(unknown)}, missing {sorted(missing)}")
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        value = table[f.name]
        if f.type in ("float", "int"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"[{where}] {f.name}: expected a number >= 0, got {value!r}")
            value = float(value) if f.type == "float" else int(value)
        out[f.name] = value
    return out


def _parse_rules(data: dict[str, Any]) -> SegmentRules:
    if set(data) != {"segments", "lifecycle", "tiers", "profile"}:
        raise ValueError(f"rules need exactly [segments] [lifecycle] [tiers] [profile], "
                         f"got {sorted(data)}")
    tiers = dict(data["tiers"])
    levels = tuple((str(lv["name"]), float(lv["min_spend"])) for lv in tiers.pop("levels", []))
    if not levels or any(b[1] <= a[1] for a, b in zip(levels, levels[1:], strict=False)):
        raise ValueError("[tiers] levels: need at least one, min_spend strictly ascending")
    segs = _fields(data["segments"], "segments", SegmentRules,
                   skip=("lifecycle", "tiers", "profile"))
    segs["precedence"] = tuple(segs["precedence"])
    if sorted(segs["precedence"]) != sorted(SEGMENTS):
        raise ValueError(f"[segments] precedence must list each of {SEGMENTS} once")
    rules = SegmentRules(
        **segs, lifecycle=LifecycleRules(**_fields(data["lifecycle"], "lifecycle",
                                                   LifecycleRules)),
        tiers=TierRules(levels=levels, **_fields(tiers, "tiers", TierRules, skip=("levels",))),
        profile=ProfileRules(**_fields(data["profile"], "profile", ProfileRules)))
    life = rules.lifecycle
    probabilities = (rules.lost_p_alive, rules.dormant_p_alive, rules.at_risk_p_alive,
                     life.at_risk_p_alive, life.churned_p_alive)
    if max(probabilities) > 1 or life.churned_after_days < life.at_risk_after_days \
            or rules.lost_after_days < rules.dormant_after_days \
            or rules.profile.price_high_from < rules.profile.price_low_below:
        raise ValueError("rules: p_alive thresholds must be <= 1, churned/lost after "
                         "at_risk/dormant, price_high_from >= price_low_below")
    return rules


def load_segment_rules(path: Path | str | None = None) -> SegmentRules:
    """Rules from a TOML file; ``None`` reads the defaults shipped with the ``aisle`` package."""
    if path is None:
        text = resources.files("aisle").joinpath("segments.default.toml").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    return _parse_rules(tomllib.loads(text))


# ---------------------------------------------------------------- order history


@dataclass(frozen=True, slots=True)
class _Orders:
    """Order times, ascending, and each order's number (1 = first ever).

    ``facts.purchases`` is bounded, so a long history may start mid-way: the first order
    (``first_order_ts``) is then followed by a jump in numbers, and what happened in that
    gap is unknown — no gap-driven stage is derived from it.
    """

    times: tuple[float, ...]
    numbers: tuple[int, ...]

    def gap_known(self, k: int) -> bool:
        """Whether nothing is missing between order ``k-1`` and order ``k`` (indices)."""
        return self.numbers[k] - self.numbers[k - 1] == 1


def _orders(facts: CustomerFacts) -> _Orders:
    first_ts: dict[str, float] = {}
    get = first_ts.get
    for p in facts.purchases:  # each order's earliest line (no min() call per line)
        seen = get(p.order_id)
        if seen is None or p.ts < seen:
            first_ts[p.order_id] = p.ts
    times = sorted(first_ts.values())
    if not times and facts.last_order_ts is not None:
        times = [facts.last_order_ts]
    missing = max(facts.orders - len(times), 0)
    numbers = [missing + i + 1 for i in range(len(times))]
    first = facts.first_order_ts
    if missing and first is not None and (not times or first < times[0]):
        times.insert(0, first)
        numbers.insert(0, 1)
    return _Orders(tuple(times), tuple(numbers))


def _orders_between(orders: _Orders, start: float, end: float) -> int:
    """Orders in (start, end]."""
    return (bisect.bisect_right(orders.times, end)
            - bisect.bisect_right(orders.times, start))


# ---------------------------------------------------------------- segments


def _rising(facts: CustomerFacts, clock: float, rules: SegmentRules) -> tuple[bool, str]:
    orders = _orders(facts)
    window = rules.rising_window_days * DAY_S
    recent = _orders_between(orders, clock - window, clock)
    before = _orders_between(orders, clock - 2 * window, clock - window)
    # A truncated history whose unknown stretch reaches into the windows cannot tell.
    unknown = [k for k in range(1, len(orders.times)) if not orders.gap_known(k)]
    complete = all(orders.times[k] <= clock - 2 * window for k in unknown)
    days = f"{rules.rising_window_days:g}"
    reason = f"{recent} orders in the last {days} days vs {before} in the {days} before"
    return complete and recent >= rules.potential_min_recent_orders and recent > before, reason


def segment(facts: CustomerFacts, score: RFMScore | None, p_alive: float | None,
            clock: float, rules: SegmentRules) -> tuple[str, str]:
    """``(segment, reason)``: the first rule in ``rules.precedence`` that matches.

    ``p_alive`` is None when there is no churn model; for one-time buyers BG/NBD gives 1,
    so the p_alive clauses never fire for them and recency in days decides.
    """
    if facts.orders < 1 or facts.last_order_ts is None:
        return "prospect", "has not ordered yet"
    days = max(clock - facts.last_order_ts, 0.0) / DAY_S
    first = facts.first_order_ts if facts.first_order_ts is not None else facts.last_order_ts
    tenure = max(clock - first, 0.0) / DAY_S
    alive = "" if p_alive is None else f", p_alive {p_alive:.2f}"

    def quiet(after_days: float, below: float) -> tuple[bool, str]:
        if days >= after_days:
            return True, f"no order for {days:.0f} days (>= {after_days:g}){alive}"
        if p_alive is not None and p_alive < below:
            return True, f"p_alive {p_alive:.2f} < {below:g} ({days:.0f} days since last order)"
        return False, ""

    for name in rules.precedence:
        hit, reason = False, ""
        if name == "new" and tenure < rules.new_within_days:
            hit, reason = True, f"first order {tenure:.0f} days ago (< {rules.new_within_days:g})"
        elif name == "lost":
            hit, reason = quiet(rules.lost_after_days, rules.lost_p_alive)
        elif name == "dormant":
            hit, reason = quiet(rules.dormant_after_days, rules.dormant_p_alive)
        elif name == "at_risk":
            if score is not None and score.r <= rules.at_risk_max_r \
                    and max(score.f, score.m) >= rules.at_risk_min_f_or_m:
                hit, reason = True, (f"RFM {score.code}: a frequent or big spender "
                                     f"gone quiet ({days:.0f} days){alive}")
            elif p_alive is not None and p_alive < rules.at_risk_p_alive:
                hit, reason = True, f"p_alive {p_alive:.2f} < {rules.at_risk_p_alive:g}"
        elif name == "high_value_loyal" and score is not None \
                and min(score.r, score.f, score.m) >= rules.loyal_min_score:
            hit, reason = True, f"RFM {score.code}: recent, frequent and high spend"
        elif name == "potential":
            hit, reason = _rising(facts, clock, rules)
            reason = f"buying more often: {reason}"
        if hit:
            return name, reason
    code = f"RFM {score.code}, " if score is not None else ""
    return FALLBACK_SEGMENT, f"{code}{days:.0f} days since last order; no rule matched"


# ---------------------------------------------------------------- lifecycle


def _stage_at(orders: _Orders, t: float, rules: LifecycleRules) -> str:
    """The stage at time ``t`` from the orders up to ``t`` alone (no p_alive)."""
    k = bisect.bisect_right(orders.times, t)
    if k == 0:
        return "prospect"
    last = orders.times[k - 1]
    # Orders are missing right after this one: recency is unknown, assume none elapsed.
    unknown_after = k < len(orders.times) and not orders.gap_known(k)
    days = 0.0 if unknown_after else (t - last) / DAY_S
    if days >= rules.churned_after_days:
        return "churned"
    if days >= rules.at_risk_after_days:
        return "at_risk"
    if k >= 2 and orders.gap_known(k - 1) \
            and (last - orders.times[k - 2]) / DAY_S > rules.at_risk_after_days:
        return "reactivated"
    number = orders.numbers[k - 1]
    if number == 1:
        return "first_purchase"
    tenure = (t - orders.times[0]) / DAY_S
    if number >= rules.mature_min_orders and tenure >= rules.mature_min_days:
        return "mature"
    return "growing"


def lifecycle_stage(facts: CustomerFacts, clock: float, p_alive: float | None,
                    rules: LifecycleRules) -> str:
    """One of :data:`LIFECYCLE_STAGES` at ``clock``.

    From the order history and days since the last order; a low ``p_alive`` moves a
    buying customer to at_risk or churned before the day thresholds would.
    """
    stage = _stage_at(_orders(facts), clock, rules)
    if p_alive is None or stage in ("prospect", "churned"):
        return stage
    if p_alive < rules.churned_p_alive:
        return "churned"
    if p_alive < rules.at_risk_p_alive:
        return "at_risk"
    return stage


def lifecycle_transitions(facts: CustomerFacts, clock: float,
                          rules: LifecycleRules) -> list[tuple[str, float]]:
    """The stages the customer went through up to ``clock``, each with the time it began.

    Stages change only at an order, at an order + at_risk/churned days, or when tenure
    reaches ``mature_min_days``; evaluating :func:`_stage_at` at those instants gives
    every change. The last entry agrees with ``lifecycle_stage(..., p_alive=None)``.
    """
    orders = _orders(facts)
    out: list[tuple[str, float]] = []
    seen = facts.first_seen_ts
    if seen is not None and (not orders.times or seen < orders.times[0]):
        out.append(("prospect", seen))
    if not orders.times:
        return out
    moments = set(orders.times)
    moments.add(orders.times[0] + rules.mature_min_days * DAY_S)
    for k, t in enumerate(orders.times):
        if k + 1 == len(orders.times) or orders.gap_known(k + 1):
            moments.add(t + rules.at_risk_after_days * DAY_S)
            moments.add(t + rules.churned_after_days * DAY_S)
    for t in sorted(m for m in moments if m <= clock):
        stage = _stage_at(orders, t, rules)
        if not out or out[-1][0] != stage:
            out.append((stage, t))
    return out


# ---------------------------------------------------------------- tiers


def _month_start(month: str) -> float:
    year, mon = month.split("-")
    return datetime(int(year), int(mon), 1, tzinfo=UTC).timestamp()


def tier_status(facts: CustomerFacts, clock: float, rules: TierRules) -> TierStatus:
    """Tier from spend in the window ending at ``clock``, and the gap to the next tier.

    Month granularity: a month counts, in full, when it begins inside
    ``(clock - window_days, clock]`` (see the rules file).

    >>> rules = TierRules((("member", 0.0), ("silver", 300.0)), window_days=365, currency="GBP")
    >>> f = CustomerFacts("u", None, None, None, None, 2, 250.0,
    ...                   spend_by_month={"2011-08": 200.0, "2010-09": 999.0, "2011-09": 50.5})
    >>> tier_status(f, datetime(2011, 9, 15, tzinfo=UTC).timestamp(), rules)
    TierStatus(tier='member', window_spend=250.5, next_tier='silver', gap=49.5)
    """
    start = clock - rules.window_days * DAY_S
    spend = round(sum(amount for month, amount in facts.spend_by_month.items()
                      if start < _month_start(month) <= clock), 2)
    tier: str | None = None
    for name, min_spend in rules.levels:
        if spend >= min_spend:
            tier = name
        else:
            return TierStatus(tier, spend, name, round(min_spend - spend, 2))
    return TierStatus(tier, spend, None, None)


# ---------------------------------------------------------------- profile


def _price_band(facts: CustomerFacts, rules: ProfileRules) -> str | None:
    units = sum(p.quantity for p in facts.purchases)
    if units <= 0:
        return None
    unit_price = sum(p.amount for p in facts.purchases) / units
    if unit_price < rules.price_low_below:
        return "low"
    return "high" if unit_price >= rules.price_high_from else "mid"


def build_profile(facts: CustomerFacts, stats: PopulationStats, clock: float,
                  rules: SegmentRules, repeat_items: set[str] | None = None) -> CustomerProfile:
    """The shop assistant's view of one customer at ``clock``.

    ``p_alive`` is reported for repeat buyers only: for one-time buyers BG/NBD says 1 by
    construction (models/churn.py), which is not an estimate; their segment and stage come
    from recency.
    """
    score = score_rfm(facts, stats.rfm, clock)
    alive: float | None = None
    if stats.churn is not None and facts.orders >= 2:
        x, t_x, big_t = customer_rhythm(facts, clock, stats.churn.time_unit_days)
        alive = float(p_alive(stats.churn, np.array([x]), np.array([t_x]), np.array([big_t]))[0])
    name, reason = segment(facts, score, alive, clock, rules)
    top = sorted(facts.categories.items(), key=lambda kv: (-kv[1], kv[0]))
    source = min(facts.sources.items(), key=lambda kv: (-kv[1], kv[0]))[0] \
        if facts.sources else None
    due = replenishments(facts, stats, clock, rules.profile.replenish_due_within_days,
                         repeat_items, rules.profile.max_overdue_intervals)
    return CustomerProfile(
        user_id=facts.user_id, clock=clock, rfm=score, segment=name, segment_reason=reason,
        lifecycle=lifecycle_stage(facts, clock, alive, rules.lifecycle),
        p_alive=alive, churn_risk=None if alive is None else 1.0 - alive,
        tier=tier_status(facts, clock, rules.tiers),
        top_categories=tuple(c for c, _ in top[:rules.profile.top_categories]),
        preferred_source=source, price_band=_price_band(facts, rules.profile),
        promotion_sensitivity=facts.promo_orders / facts.orders if facts.orders else None,
        replenishments_due=tuple(due))
