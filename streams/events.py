"""The one event schema, shared by producers, agents, the API, tests and benchmarks.

Every event is a JSON object with a common envelope and a ``type`` that selects its
payload. Decoding validates types and bounds in one pass (msgspec); anything that does
not decode is a :class:`DecodeError` with a reason and goes to the dead-letter topic.

>>> ev = decode_event(b'{"type":"product.viewed","event_id":"e1","user_id":"u1",'
...                   b'"occurred_at":"2011-12-01T10:00:00Z","payload":{"item_id":"85123A"}}')
>>> ev.payload.item_id, ev.ts
('85123A', 1322733600.0)
"""

from __future__ import annotations

import functools
import time
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias
from zoneinfo import available_timezones

import msgspec
from msgspec import Meta

SCHEMA_VERSION: Final = 1
# Events before this or more than a day in the future are absurd, not late.
MIN_TS: Final = 631152000.0  # 1990-01-01T00:00:00Z
FUTURE_SLACK_S: Final = 86400.0

Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@/+\-]+$",
                         description="1-128 chars of A-Z a-z 0-9 _ . : @ / + -")]
Text = Annotated[str, Meta(max_length=4000)]
Short = Annotated[str, Meta(max_length=200)]
Tag = Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\s:]+:[^\s]+$",
                          description="attribute:value, e.g. material:polyester")]
Quantity = Annotated[int, Meta(gt=0, le=100_000)]
Price = Annotated[float, Meta(ge=0, le=1_000_000)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Rating = Annotated[int, Meta(ge=1, le=5)]
Stock = Annotated[int, Meta(ge=0, le=100_000_000)]
When = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a time zone")]


class DecodeError(ValueError):
    """A poison event: the bytes could not become a valid event. ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------- payloads

class ItemRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Id
    # Optional hints the shop may send; the catalog is used when absent.
    category: Short | None = None
    # The recommendation answer this interaction came from (for attribution).
    request_id: Short | None = None


class CartLine(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Id
    quantity: Quantity = 1
    category: Short | None = None
    request_id: Short | None = None


class OrderLine(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Id
    quantity: Quantity
    unit_price: Price
    currency: Currency = "GBP"
    category: Short | None = None


class Order(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    order_id: Id
    lines: Annotated[list[OrderLine], Meta(min_length=1, max_length=1000)]
    offer_id: Short | None = None


class Cancellation(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    order_id: Id
    # Cancelled lines; empty means "the whole order".
    lines: Annotated[list[OrderLine], Meta(max_length=1000)] = []


class Review(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Id
    rating: Rating
    text: Text | None = None
    tags: Annotated[list[Tag], Meta(max_length=50)] = []


class Complaint(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    reason: Text
    item_id: Id | None = None
    order_id: Id | None = None
    tags: Annotated[list[Tag], Meta(max_length=50)] = []


class Preference(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    dislikes: Annotated[list[Tag], Meta(max_length=100)] = []
    # Previously stated dislikes the customer takes back.
    retracts: Annotated[list[Tag], Meta(max_length=100)] = []
    note: Text | None = None


class CatalogItem(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Id
    title: Annotated[str, Meta(min_length=1, max_length=300)]
    category: Short = "unknown"
    brand: Short | None = None
    price: Price = 0.0
    currency: Currency = "GBP"
    stock: Stock | None = None
    # None: infer from how often buyers buy it again.
    consumable: bool | None = None
    attributes: Annotated[dict[Annotated[str, Meta(max_length=50)], Short],
                          Meta(max_length=50)] = {}


class ItemRemoved(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    item_id: Id


class Empty(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class OfferIssue(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    offer_id: Id
    rule_id: Short
    policy_version: Short
    kind: Short
    discount_pct: Annotated[float, Meta(ge=0, le=100)]
    items: Annotated[list[Id], Meta(max_length=50)]
    expires_at: When
    reason: Text
    trigger: Short


class OfferRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    offer_id: Id
    order_id: Id | None = None


class LifecycleChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    stage: Annotated[str, Meta(pattern=r"^[a-z_]{1,40}$")]
    previous: Annotated[str, Meta(pattern=r"^[a-z_]{1,40}$")] | None = None


# ---------------------------------------------------------------- envelope

class Event(msgspec.Struct, kw_only=True, frozen=True, tag_field="type",
            forbid_unknown_fields=True, dict=True):
    """The versioned envelope. ``type`` (the tag) selects the payload."""

    event_id: Id
    occurred_at: When
    user_id: Id | None = None
    session_id: Id | None = None
    source: Short = "unknown"
    schema_version: Annotated[int, Meta(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION

    # Which events must name a customer. Guest orders and catalog events need not.
    needs_user: ClassVar[bool] = True

    def __post_init__(self) -> None:
        ts = self.occurred_at.timestamp()
        # ``dict=True`` gives the frozen struct a __dict__ for this cache: a fold reads
        # ``ts`` half a dozen times per event, and an aware datetime's timestamp() is
        # ~0.3 µs each (benchmarks/README.md, Ingest).
        self.__dict__["ts"] = ts
        if ts < MIN_TS or ts > time.time() + FUTURE_SLACK_S:
            raise ValueError(f"occurred_at {self.occurred_at.isoformat()} is out of range")
        if self.needs_user and self.user_id is None:
            raise ValueError(f"{type(self).__name__} needs a user_id")

    @functools.cached_property
    def ts(self) -> float:
        """Event time as Unix seconds: every decay and window uses this, never now()."""
        return self.occurred_at.timestamp()

    @property
    def routing_key(self) -> str:
        """The Kafka key: the customer, else the entity the event is about."""
        return self.user_id or _entity_id(self)


class ProductViewed(Event, tag="product.viewed"):
    payload: ItemRef


class CartItemAdded(Event, tag="cart.item_added"):
    payload: CartLine


class CartItemRemoved(Event, tag="cart.item_removed"):
    payload: ItemRef


class ProductFavorited(Event, tag="product.favorited"):
    payload: ItemRef


class OrderPlaced(Event, tag="order.placed"):
    needs_user: ClassVar[bool] = False  # guest checkout
    payload: Order


class OrderCancelled(Event, tag="order.cancelled"):
    needs_user: ClassVar[bool] = False
    payload: Cancellation


class ReviewSubmitted(Event, tag="review.submitted"):
    payload: Review


class ComplaintFiled(Event, tag="complaint.filed"):
    payload: Complaint


class PreferenceStated(Event, tag="preference.stated"):
    payload: Preference


class CatalogItemUpserted(Event, tag="catalog.item_upserted"):
    needs_user: ClassVar[bool] = False
    payload: CatalogItem

    @property
    def routing_key(self) -> str:
        """The item, even when a ``user_id`` says who changed it: an item's state lives
        in the item's shard."""
        return self.payload.item_id


class CatalogItemRemoved(Event, tag="catalog.item_removed"):
    needs_user: ClassVar[bool] = False
    payload: ItemRemoved

    @property
    def routing_key(self) -> str:
        return self.payload.item_id  # as CatalogItemUpserted's


class UserErased(Event, tag="user.erased"):
    payload: Empty = Empty()


class OfferIssued(Event, tag="offer.issued"):
    """Aisle issued a limited-time offer (the API writes it; replay restores it)."""

    payload: OfferIssue


class OfferRedeemed(Event, tag="offer.redeemed"):
    payload: OfferRef


class OfferExpired(Event, tag="offer.expired"):
    payload: OfferRef


class LifecycleChanged(Event, tag="lifecycle.changed"):
    """A customer entered a lifecycle stage; ``occurred_at`` is when the stage began."""

    payload: LifecycleChange


# ---------------------------------------------------------------- experiments (A/B)

# Every definition event is keyed by this one routing key, so all definitions live in one
# shard (one slot) and stay in order on one partition.
EXPERIMENTS_KEY: Final = "aisle.experiments"
SURFACES: Final = ("related", "recommendations", "offers", "push")
METRICS: Final = ("ctr", "conversion", "revenue_per_user", "aov")
# Variant parameters the engine understands; anything else is a typo, rejected.
VARIANT_PARAMS: Final = {
    "blend_als": float, "blend_copurchase": float, "blend_coview": float,
    "blend_session": float,  # related/recommendations blend weights (settings.serving)
    "blend_resume": float, "blend_rebuy": float,  # the customer's own items (serving/again.py)
    "blend_viewed_similar": float,  # similar to what you just viewed (serving/viewed.py)
    "discount_scale": float,  # offers: every rule's discount × this (policy version tagged)
    "offers_off": bool,  # offers: a holdout that gets no new offers
}
BUCKETS: Final = 10_000
XId = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$",
                          description="1-40 chars of a-z 0-9 _ -, starting with a letter or digit")]
Surface = Literal["related", "recommendations", "offers", "push"]
Metric = Literal["ctr", "conversion", "revenue_per_user", "aov"]
ParamValue = float | bool


class Variant(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: XId
    weight: Annotated[float, Meta(gt=0, le=1_000_000)]
    params: Annotated[dict[str, ParamValue], Meta(max_length=20)] = {}


class Guardrail(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    metric: Metric
    # Violated when the metric is, with 95% confidence, down by more than this.
    max_drop_pct: Annotated[float, Meta(ge=0, le=100)] = 5.0


class ExperimentSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An experiment definition. ``layer_range`` is the slice of the layer's buckets this
    experiment owns: experiments of one layer must not overlap (the admin API checks)."""

    id: XId
    surfaces: Annotated[list[Surface], Meta(min_length=1, max_length=4)]
    variants: Annotated[list[Variant], Meta(min_length=2, max_length=10)]
    layer: XId = "default"
    layer_range: tuple[Annotated[int, Meta(ge=0, le=BUCKETS)],
                       Annotated[int, Meta(ge=0, le=BUCKETS)]] = (0, BUCKETS)
    control: XId | None = None  # default: the first variant
    salt: Short | None = None  # default: the id
    segments: Annotated[list[Short], Meta(max_length=20)] = []  # targeting; [] = everyone
    starts_at: When | None = None
    ends_at: When | None = None
    primary_metric: Metric = "conversion"
    guardrails: Annotated[list[Guardrail], Meta(max_length=10)] = []
    description: Text | None = None

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the variants {names}")
        lo, hi = self.layer_range
        if lo >= hi:
            raise ValueError(f"layer_range must be [lo, hi) with lo < hi, got {[lo, hi]}")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        for v in self.variants:
            for name, value in v.params.items():
                kind = VARIANT_PARAMS.get(name)
                if kind is None:
                    raise ValueError(f"variant {v.name}: unknown parameter {name!r}; known: "
                                     f"{', '.join(sorted(VARIANT_PARAMS))}")
                if (kind is bool) != isinstance(value, bool) or (
                        kind is float and not 0 <= value <= 100):
                    raise ValueError(f"variant {v.name}: {name} must be "
                                     f"{'true/false' if kind is bool else 'a number 0-100'}")

    @property
    def control_name(self) -> str:
        return self.control or self.variants[0].name


class ExperimentRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    experiment_id: XId


class Exposure(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    request_id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]
    experiment: XId
    variant: XId
    surface: Surface
    items: Annotated[list[Id], Meta(max_length=100)] = []


class _ExperimentEvent(Event, kw_only=True, frozen=True):
    needs_user: ClassVar[bool] = False

    @property
    def routing_key(self) -> str:
        return EXPERIMENTS_KEY


class ExperimentCreated(_ExperimentEvent, tag="experiment.created"):
    payload: ExperimentSpec


class ExperimentUpdated(_ExperimentEvent, tag="experiment.updated"):
    """The whole new definition (the admin API merges the change into the old one)."""

    payload: ExperimentSpec


class ExperimentStopped(_ExperimentEvent, tag="experiment.stopped"):
    payload: ExperimentRef


class ExperimentExposed(Event, tag="experiment.exposed"):
    """An answer was served under an experiment (the API writes one per answer and
    experiment; ``event_id`` is derived from the request id, so a retry is a duplicate)."""

    payload: Exposure
# ---------------------------------------------------------------- push notifications

@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _valid_zone(name: str) -> None:
    # The IANA list, not ZoneInfo(name): that would open any path-like name as a file.
    if name not in _zones():
        raise ValueError(f"unknown time zone {name!r} (want an IANA name, e.g. Europe/London)")


class Consent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the customer agreed to; fields left out keep their previous value."""

    # Push messages allowed (opt-in) or not (opt-out).
    push: bool | None = None
    # IANA time zone for quiet hours, e.g. "Europe/London"; None keeps the known one.
    timezone: Annotated[str, Meta(min_length=1, max_length=64)] | None = None

    def __post_init__(self) -> None:
        if self.timezone is not None:
            _valid_zone(self.timezone)


class PushDecision(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the push drain decided about one due trigger (see push/drain.py)."""

    # The trigger as scheduled: "<reason>|<ref>" (the user is the envelope's user_id).
    trigger: Annotated[str, Meta(min_length=2, max_length=300, pattern=r"^[a-z_]+\|")]
    # Its due time as stored (Unix seconds): the fold removes the trigger only if it was
    # not rescheduled since (a later cart add moves the abandonment check).
    due_ts: float
    outcome: Literal["emitted", "held", "dropped"]
    # emitted: the reason; held: why; dropped: the rule that suppressed it.
    rule: Short
    candidate_id: Id | None = None
    dedupe_key: Short | None = None
    items: Annotated[list[Id], Meta(max_length=50)] = []
    hold_until_ts: float | None = None


class ItemChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An item this customer watched got cheaper or came back in stock."""

    item_id: Id
    change: Literal["price_drop", "back_in_stock"]
    price: Price
    previous_price: Price
    # The catalog event that changed it (one change, one push trigger per watcher).
    catalog_event_id: Id


class PushSchedule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A trigger the customer sweep found (replenishment due, close to the next tier)."""

    reason: Literal["replenish", "tier_nudge"]
    # replenish: "<item>@<last purchase ts>"; tier_nudge: "<next tier>@<month>@<gap>".
    ref: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^|]+$")]
    due_ts: float


class ConsentUpdated(Event, tag="consent.updated"):
    payload: Consent


class PushDecided(Event, tag="push.decided"):
    """Aisle's push drain decided a trigger (the worker writes it; replay restores the
    fatigue ledger and the schedule from it)."""

    payload: PushDecision


class PushItemChanged(Event, tag="push.item_changed"):
    """Written by the worker that applied a catalog change, once per watching customer,
    so the trigger lands in the customer's own shard."""

    payload: ItemChange


class PushScheduled(Event, tag="push.scheduled"):
    """Written by the push sweep (push/sweep.py) with an id derived from the trigger, so a
    repeated sweep adds nothing."""

    payload: PushSchedule


AnyEvent: TypeAlias = (
    ProductViewed | CartItemAdded | CartItemRemoved | ProductFavorited | OrderPlaced
    | OrderCancelled | ReviewSubmitted | ComplaintFiled | PreferenceStated
    | CatalogItemUpserted | CatalogItemRemoved | UserErased
    | OfferIssued | OfferRedeemed | OfferExpired | LifecycleChanged
    | ExperimentCreated | ExperimentUpdated | ExperimentStopped | ExperimentExposed
    | ConsentUpdated | PushDecided | PushItemChanged | PushScheduled
)
EVENT_TYPES: Final = {cls.__struct_config__.tag: cls for cls in AnyEvent.__args__}  # type: ignore[attr-defined]
CATALOG_TYPES: Final = frozenset({"catalog.item_upserted", "catalog.item_removed"})
# Written by Aisle itself (offers, lifecycle sweep, push drain, experiment exposures) or
# by an admin operation (erasure, experiment definitions). The public events endpoint
# takes them only with the admin key: anyone else could erase a customer, start an
# experiment or fake a push decision.
ENGINE_TYPES: Final = frozenset({
    "user.erased", "offer.issued", "lifecycle.changed",
    "experiment.created", "experiment.updated", "experiment.stopped", "experiment.exposed",
    "push.decided", "push.scheduled", "push.item_changed"})


def _entity_id(event: Event) -> str:
    payload: Any = getattr(event, "payload", None)
    for name in ("order_id", "item_id"):
        value = getattr(payload, name, None)
        if value:
            return str(value)
    return event.event_id


def is_catalog(event: Event) -> bool:
    return event.__struct_config__.tag in CATALOG_TYPES


def event_type(event: Event) -> str:
    return str(event.__struct_config__.tag)


# ---------------------------------------------------------------- codec

_decoder = msgspec.json.Decoder(AnyEvent)
_batch_decoder = msgspec.json.Decoder(list[AnyEvent])
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes | str) -> AnyEvent:
    """Bytes → a valid event, or :class:`DecodeError` saying what is wrong."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(_explain(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None
    except (UnicodeDecodeError, OverflowError, RecursionError) as exc:
        raise DecodeError(f"undecodable: {exc}") from None


def decode_events(data: bytes) -> list[AnyEvent]:
    """A JSON array of events (the API's batch form); one error fails the batch."""
    try:
        return _batch_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeError(_explain(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}") from None


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def _explain(message: str) -> str:
    if "Invalid value" in message and "`$.type`" in message:
        return f"unknown event type ({message}); known: {', '.join(sorted(EVENT_TYPES))}"
    return message


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the envelope (all event types)."""
    return msgspec.json.schema(AnyEvent)
