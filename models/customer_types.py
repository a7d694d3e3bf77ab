"""Plain data shared by customer intelligence (models/customer.py), the offer policy
(serving/offers.py) and the profile endpoint. No logic here.

Times are Unix seconds of *event time*; ``clock`` is "now" on the log's clock (the newest
event time the store has applied), so replaying 2011 data classifies customers as of
2011, while a live shop's clock is simply current.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec


class Purchase(msgspec.Struct, frozen=True, array_like=True):
    """One stored purchase line. Array-like: the store keeps each line as the JSON array
    ``[order_id, item_id, ts, quantity, amount, category]``, decoded straight into these
    (feature_store/reader.py; 18 us for a 65-line history, against 101 us through lists
    and a constructor call per line)."""

    order_id: str
    item_id: str
    ts: float
    quantity: int
    amount: float
    category: str | None = None


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What the stream keeps about one customer (see docs/keys.md), as plain values."""

    user_id: str
    first_seen_ts: float | None          # first event of any kind
    last_seen_ts: float | None           # newest event of any kind
    first_order_ts: float | None
    last_order_ts: float | None
    orders: int                          # orders placed
    monetary: float                      # spend net of cancellations
    purchases: tuple[Purchase, ...] = ()  # newest first, bounded (200 lines)
    promo_orders: int = 0                # orders that used an offer
    sources: dict[str, int] = field(default_factory=dict)          # channel -> events
    spend_by_month: dict[str, float] = field(default_factory=dict)  # "YYYY-MM" -> amount
    favorites: tuple[str, ...] = ()      # favourited items, newest first
    categories: dict[str, float] = field(default_factory=dict)      # category -> affinity


@dataclass(frozen=True, slots=True)
class RFMThresholds:
    """Quintile edges over the current population (4 edges each → scores 1..5)."""

    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]
    as_of: float                          # the clock they were computed at
    customers: int


@dataclass(frozen=True, slots=True)
class BGNBDParams:
    r: float
    alpha: float
    a: float
    b: float
    time_unit_days: float = 7.0           # rhythm measured in weeks


@dataclass(frozen=True, slots=True)
class PopulationStats:
    """Refreshed periodically by the workers from all customers; read by every answer."""

    rfm: RFMThresholds
    churn: BGNBDParams | None
    item_cycle_days: dict[str, float]     # item -> median repurchase gap (repeat buyers)
    category_cycle_days: dict[str, float]
    as_of: float


@dataclass(frozen=True, slots=True)
class RFMScore:
    recency_days: float
    frequency: int
    monetary: float
    r: int
    f: int
    m: int

    @property
    def code(self) -> str:
        return f"{self.r}{self.f}{self.m}"


class Replenishment(msgspec.Struct, frozen=True, gc=False):
    """Untracked by the garbage collector (``gc=False``: it holds only strings and
    numbers, so it can be in no cycle). A buyer's profile holds ~20 of these (990 Online
    Retail customers: 21,251), kept in the API's per-customer cache; as frozen dataclass
    instances they were half of the objects a full GC pass walked after a first-visit
    pass (21,251 of 42,920)."""

    item_id: str
    interval_days: float
    last_purchase_ts: float
    runout_ts: float
    basis: str                            # "customer" | "category" | "population"


@dataclass(frozen=True, slots=True)
class TierStatus:
    tier: str | None
    window_spend: float
    next_tier: str | None
    gap: float | None                     # spend still needed for next_tier


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    """The shop assistant's view of one customer at ``clock``."""

    user_id: str
    clock: float
    rfm: RFMScore | None
    segment: str
    segment_reason: str
    lifecycle: str
    p_alive: float | None                 # probability the customer is still active
    churn_risk: float | None              # 1 - p_alive
    tier: TierStatus
    top_categories: tuple[str, ...]
    preferred_source: str | None
    price_band: str | None                # "low" | "mid" | "high"
    promotion_sensitivity: float | None   # share of orders made with an offer
    replenishments_due: tuple[Replenishment, ...]
