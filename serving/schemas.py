"""Response bodies, as msgspec structs (encoded directly; described in the OpenAPI doc)."""

from __future__ import annotations

import msgspec


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
