"""Response bodies, as msgspec structs (encoded directly; described in the OpenAPI doc)."""

from __future__ import annotations

import msgspec


class ExperimentTag(msgspec.Struct):
    """The experiment and variant an answer was served under."""

    id: str
    variant: str


class RecommendedItem(msgspec.Struct, omit_defaults=True):
    item_id: str
    score: float
    reason: str
    title: str | None = None
    price: float | None = None
    category: str | None = None


class ItemsAnswer(msgspec.Struct):
    request_id: str
    model_version: str | None
    strategy: str
    degraded: bool
    items: list[RecommendedItem]
    item_id: str | None = None
    user_id: str | None = None
    experiments: list[ExperimentTag] = []


class Accepted(msgspec.Struct):
    request_id: str
    accepted: int
    event_ids: list[str]


class ErrorBody(msgspec.Struct):
    request_id: str
    error: str
    detail: str


class Health(msgspec.Struct):
    status: str
    checks: dict[str, str]
    model_version: str | None = None


class OfferItem(msgspec.Struct, omit_defaults=True):
    item_id: str
    title: str | None = None
    price: float | None = None


class OfferOut(msgspec.Struct):
    offer_id: str
    kind: str
    discount_pct: float
    items: list[OfferItem]
    issued_at: str
    expires_at: str
    seconds_left: int
    reason: str
    trigger: str
    rule_id: str
    policy_version: str


class OffersAnswer(msgspec.Struct):
    request_id: str
    user_id: str
    clock: str
    offers: list[OfferOut]
    issued: str | None = None
    degraded: bool = False
    experiments: list[ExperimentTag] = []


class RFMOut(msgspec.Struct):
    recency_days: float
    frequency: int
    monetary: float
    r: int
    f: int
    m: int
    code: str


class TierOut(msgspec.Struct):
    tier: str | None
    window_spend: float
    next_tier: str | None
    gap: float | None


class ReplenishmentOut(msgspec.Struct):
    item_id: str
    title: str | None
    interval_days: float
    last_purchase: str
    runs_out: str
    basis: str


class PurchaseOut(msgspec.Struct):
    order_id: str
    item_id: str
    title: str | None
    at: str
    quantity: int
    amount: float


class ProfileAnswer(msgspec.Struct):
    request_id: str
    user_id: str
    clock: str
    known: bool
    segment: str
    segment_reason: str
    lifecycle: str
    lifecycle_history: list[tuple[str, str]]
    rfm: RFMOut | None
    p_alive: float | None
    churn_risk: float | None
    tier: TierOut
    top_categories: list[str]
    preferred_source: str | None
    price_band: str | None
    promotion_sensitivity: float | None
    dislikes: dict[str, str]
    recent_purchases: list[PurchaseOut]
    replenishments_due: list[ReplenishmentOut]
    active_offers: list[OfferOut]
