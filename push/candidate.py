"""The candidate document on ``topics.push``: CloudEvents 1.0, JSON, keyed by customer.

One place builds it (:func:`build_candidate`), so a variant (an experiment) could later
change the content without touching the drain. The push system renders the text from
``template`` and ``variables``; Aisle never writes copy.
"""

from __future__ import annotations

import hashlib
import inspect
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

SPEC_VERSION: Final = "1.0"
EVENT_TYPE: Final = "com.aisle.push.candidate.v1"

Reason = Literal["cart_abandon", "offer_expiring", "winback", "price_drop", "back_in_stock",
                 "replenish", "tier_nudge"]


class CandidateItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    item_id: str
    title: str | None
    price: float | None
    currency: str | None = None


class CandidateOffer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    offer_id: str
    kind: str
    discount_pct: float
    expires_at: str  # RFC 3339, UTC


class CandidateData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason
    # Higher wins when several compete for the same customer.
    priority: Annotated[int, Meta(ge=0, le=100)]
    items: list[CandidateItem]
    offer: CandidateOffer | None
    # Do not deliver before / after these (RFC 3339, UTC).
    send_after: str
    expires_at: str
    # The push system may drop a candidate whose dedupe_key it delivered recently.
    dedupe_key: str
    template: str
    variables: dict[str, str]


class Candidate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A CloudEvents 1.0 structured-mode event. ``id`` is deterministic: the same trigger
    decided twice (a worker died after Kafka acked) carries the same id."""

    id: str
    source: str
    subject: str  # the customer
    time: str
    data: CandidateData
    specversion: str = SPEC_VERSION
    type: str = EVENT_TYPE
    datacontenttype: str = "application/json"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def candidate_id(trigger: str, due_ts: float) -> str:
    """Stable id of the candidate a trigger (as scheduled at ``due_ts``) produces.

    >>> candidate_id("u1|cart_abandon|", 1.5) == candidate_id("u1|cart_abandon|", 1.5)
    True
    """
    digest = hashlib.blake2b(f"{trigger}@{due_ts!r}".encode(), digest_size=10).hexdigest()
    return f"pc-{digest}"


def build_candidate(*, candidate_id: str, user_id: str, source: str, clock: float,
                    reason: Reason, priority: int, items: list[CandidateItem],
                    offer: CandidateOffer | None, expires_ts: float, dedupe_key: str,
                    variables: dict[str, str]) -> Candidate:
    return Candidate(
        id=candidate_id, source=source, subject=user_id, time=iso(clock),
        data=CandidateData(reason=reason, priority=priority, items=items, offer=offer,
                           send_after=iso(clock), expires_at=iso(expires_ts),
                           dedupe_key=dedupe_key, template=f"push.{reason}.v1",
                           variables=variables))


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Candidate)


def encode_candidate(c: Candidate) -> bytes:
    return _encoder.encode(c)


def decode_candidate(data: bytes) -> Candidate:
    return _decoder.decode(data)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the candidate document. Descriptions are cleaned
    here (as msgspec >= 0.23 does itself, and earlier versions did not), so the file the
    push team reads does not change with the msgspec version installed."""
    return _clean_descriptions(msgspec.json.schema(Candidate))


def _clean_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str)
                else _clean_descriptions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node
