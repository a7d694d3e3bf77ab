"""Thin HTTP handlers: parse and check input, call the service, encode the answer."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from feature_store.reader import ItemInfo
from serving.crm import (
    CustomerView,
    iso,
    lifecycle_history,
    offer_seconds_left,
    still_fit,
)
from serving.errors import (
    BrokerUnavailable,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from serving.experiments import Assignment, new_event_id
from serving.offers import Decision, Offer
from serving.openapi import DOCS_HTML, openapi_document
from serving.schemas import (
    Accepted,
    ExperimentTag,
    Health,
    ItemsAnswer,
    OfferItem,
    OfferOut,
    OffersAnswer,
    ProfileAnswer,
    PurchaseOut,
    RecommendedItem,
    ReplenishmentOut,
    RFMOut,
    TierOut,
)
from serving.service import Answer, unpack
from streams.events import (
    ENGINE_TYPES,
    DecodeError,
    ExperimentCreated,
    ExperimentRef,
    ExperimentSpec,
    ExperimentStopped,
    ExperimentUpdated,
    UserErased,
    decode_event,
    decode_events,
    event_type,
)

log = logging.getLogger(__name__)
ID_RE = re.compile(r"^[A-Za-z0-9_.:@/+\-]{1,128}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
LATENCY = Histogram("aisle_request_seconds", "API latency by route", ["route"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
# Bound once: labels() takes a lock and a dict lookup on every call.
TIMED = {route: LATENCY.labels(route)
         for route in ("related", "recommendations", "offers", "profile", "events")}
DEGRADED = Counter("aisle_degraded_answers_total", "answers served without the store",
                   ["route"])
ACCEPTED = Counter("aisle_events_accepted_total", "events handed to Kafka by the API")
CACHE = Gauge("aisle_aggregate_cache_lookups", "co-occurrence cache lookups", ["result"])
REJECTED = Counter("aisle_events_rejected_total", "event submissions rejected", ["reason"])
RELATED_CACHE = Gauge("aisle_related_answer_cache",
                      "anonymous related answers kept (serving/answer_cache.py): entries, "
                      "stale answers given while a refresh was due, background refreshes, "
                      "refreshes queued", ["what"])
CATALOG_CACHE = Gauge("aisle_catalog_cache", "catalog entries in memory, read from the "
                      "store, and dropped by the change feed", ["what"])

_encoder = msgspec.json.Encoder()


def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status, headers, media_type="application/json")


# Request ids made here: this process's random 64-bit prefix and a counter, 32 hex digits
# as a UUID's; unique across replicas without a urandom call per request (uuid4 was ~1%
# of a recommendation's CPU under load).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def request_id(request: Request) -> str:
    rid = request.scope.get("aisle_request_id")
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if REQUEST_ID_RE.match(given) else _new_request_id()
        request.scope["aisle_request_id"] = rid
    return str(rid)


def _state(request: Request) -> Any:
    return request.app.state.aisle


def _id(request: Request, name: str) -> str:
    value = request.path_params[name]
    if not ID_RE.match(value):
        raise InvalidInput(f"{name} must be 1-128 characters of A-Z a-z 0-9 _ . : @ / + -")
    return str(value)


_QUERIES: dict[bytes, dict[str, str]] = {}
_QUERIES_MAX = 4096
_QUERY_KEPT_MAX = 256  # bytes: at most ~1 MB of kept strings


def _query(request: Request) -> Mapping[str, str]:
    """The request's query parameters, as ``request.query_params.get`` reads them (the
    string decoded as latin-1, blank values kept, a repeated name's last value), parsed
    once per distinct query string: widgets send a few (``limit=10``), and parsing each
    request's anew was ~10% of a reused recommendation's CPU. Shared: not to be changed."""
    raw = request.scope["query_string"]
    parsed = _QUERIES.get(raw)
    if parsed is None:
        parsed = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
        if len(raw) <= _QUERY_KEPT_MAX:  # a long one is parsed each time, not kept
            if len(_QUERIES) >= _QUERIES_MAX:  # many distinct (customer ids): start over
                _QUERIES.clear()
            _QUERIES[raw] = parsed
    return parsed


def _limit(request: Request) -> int:
    cap = _state(request).settings.serving.max_limit
    raw = _query(request).get("limit", "10")
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidInput(f"limit must be an integer, got {raw[:20]!r}") from None
    if not 1 <= limit <= cap:
        raise InvalidInput(f"limit must be between 1 and {cap}")
    return limit


def _answer(request: Request, answer: Answer, route: str,
            assignments: list[Assignment] | None = None, **ids: str) -> Response:
    if answer.degraded:
        DEGRADED.labels(route).inc()
    if answer.memo is not None and not assignments:
        return _kept_answer(request, answer.memo, route, lambda: answer, ids)
    rid = request_id(request)
    return json(_items_answer(rid, answer, assignments or [], ids), headers={"X-Request-ID": rid})


def _kept_answer(request: Request, memo: dict[str, bytes], route: str,
                 answer: Callable[[], Answer], ids: dict[str, str]) -> Response:
    """A reused answer, in no experiment: everything after the request id was encoded
    when it was first reused (a fifth of a kept answer's CPU went to making and encoding
    its structs); ``answer()`` makes it for that first time."""
    rest = memo.get(route)
    if rest is None:
        rest = memo[route] = _encoder.encode(_items_answer("", answer(), [], ids))[_AFTER_ID:]
    rid = request_id(request)
    return Response(b'{"request_id":' + _encoder.encode(rid) + rest, 200,
                    {"X-Request-ID": rid}, media_type="application/json")


_AFTER_ID = len(b'{"request_id":""')


def _items_answer(rid: str, answer: Answer, assignments: list[Assignment],
                  ids: dict[str, str]) -> ItemsAnswer:
    items = [RecommendedItem(s.item_id, s.score, s.reason, s.title, s.price, s.category)
             for s in answer.items]
    return ItemsAnswer(rid, answer.model_version, answer.strategy, answer.degraded, items,
                       **ids, experiments=[ExperimentTag(a.experiment, a.variant)
                                           for a in assignments])


async def related(request: Request) -> Response:
    started = time.perf_counter()
    item_id, limit = _id(request, "item_id"), _limit(request)
    user_id = _query(request).get("user_id")
    if user_id is not None and not ID_RE.match(user_id):
        raise InvalidInput("user_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ / + -")
    state = _state(request)
    # Anonymous related answers are in no experiment: there is nobody to assign.
    assignments = await _assign(state, user_id, "related") if user_id else []
    service = state.experiments.service_for(state.service, assignments)
    answer = await service.related(item_id, limit, user_id)
    response = _answer(request, answer, "related", assignments, item_id=item_id)
    if user_id:
        await _expose(request, assignments, user_id, [s.item_id for s in answer.items])
    TIMED["related"].observe(time.perf_counter() - started)
    return response


async def recommendations(request: Request) -> Response:
    started = time.perf_counter()
    user_id, limit = _id(request, "user_id"), _limit(request)
    context = _query(request).get("context_item")
    if context is not None and not ID_RE.match(context):
        raise InvalidInput("context_item must be 1-128 characters of A-Z a-z 0-9 _ . : @ / + -")
    state = _state(request)
    assignments = state.experiments.assign_now(user_id, "recommendations")
    if assignments is None:
        assignments = await _assign(state, user_id, "recommendations")
    elif not assignments and (kept := state.service.reused(user_id, limit, context)):
        # A returning customer whose state has not changed: their kept answer at once.
        response = _kept_answer(request, kept.memo, "recommendations",
                                lambda: unpack(kept.answer), {"user_id": user_id})
        TIMED["recommendations"].observe(time.perf_counter() - started)
        return response
    service = state.experiments.service_for(state.service, assignments)
    answer = await service.recommendations(user_id, limit, context)
    response = _answer(request, answer, "recommendations", assignments, user_id=user_id)
    if assignments:
        await _expose(request, assignments, user_id, [s.item_id for s in answer.items])
    TIMED["recommendations"].observe(time.perf_counter() - started)
    return response


def _offer_out(offer: Offer, infos: dict[str, ItemInfo], clock: float) -> OfferOut:
    items = [OfferItem(i, infos[i].title if i in infos else None,
                       infos[i].price if i in infos else None) for i in offer.items]
    return OfferOut(offer.offer_id, offer.kind, offer.discount_pct, items, iso(offer.issued_at),
                    iso(offer.expires_at), offer_seconds_left(offer, clock), offer.reason,
                    offer.trigger, offer.rule_id, offer.policy_version)


async def offers(request: Request) -> Response:
    """Active offers; issues one (recorded as an event first) when the policy says so."""
    started = time.perf_counter()
    user_id = _id(request, "user_id")
    state = _state(request)
    # The profile is derived only if something needs it: a live offer is shown as it is
    # (most page views), and only experiments that target segments ask for the segment.
    view = await state.customers.view(user_id, derive=False, offers_only=True)
    assignments = await _assign(state, user_id, "offers", view)
    memo = (state.reader.kept_memo(user_id, view.record)
            if not assignments and view.record is not None else None)
    shape = (view.clock, tuple(o.offer_id for o in view.offers))
    if memo is not None and (kept := memo.get("offers_answer")) is not None and \
            kept[0] == shape and state.reader.same_items(kept[1], kept[2]):
        # The kept read, clock and offers its answer was made from, its items' catalog
        # entries the same: the answer it gave, whose decision read nothing else.
        TIMED["offers"].observe(time.perf_counter() - started)
        rid = request_id(request)
        return Response(b'{"request_id":' + _encoder.encode(rid) + kept[3], 200,
                        media_type="application/json")
    customers = state.experiments.customers_for(state.customers, assignments)
    decision = customers.decide_now(view)
    live = decision is not None  # shown again, from the view alone
    if decision is None:
        decision = await customers.decide(view)
    issued = None
    if decision.issue is not None:
        try:
            producer = await state.producer.get()
            async with asyncio.timeout(3):
                await customers.record_issue(decision.issue, producer.send_events)
            issued = decision.issue.offer_id
        except (BrokerUnavailable, KafkaError, TimeoutError):
            # Never promise an offer the log does not hold: show only what is on record.
            decision = Decision(customers.active(view), None)
    ids = [i for o in decision.show for i in o.items]
    infos = state.reader.fresh_items(ids)  # most answers: from memory, nothing to wait for
    if infos is None:
        infos = await state.reader.items(ids)
    shown = still_fit(decision.show, infos, view.state)
    body = OffersAnswer(request_id(request), user_id, iso(view.clock),
                        [_offer_out(o, infos, view.clock) for o in shown], issued,
                        experiments=[ExperimentTag(a.experiment, a.variant)
                                     for a in assignments])
    if assignments:
        await _expose(request, assignments, user_id, [i for o in shown for i in o.items])
    encoded = _encoder.encode(body)
    if memo is not None and live:  # kept with the read: gone when the customer changes
        entries = tuple(state.reader.cached_item(i) for i in ids)
        rest = encoded[len(_encoder.encode(body.request_id)) + len(b'{"request_id":'):]
        memo["offers_answer"] = (shape, ids, entries, rest)
    TIMED["offers"].observe(time.perf_counter() - started)
    return Response(encoded, 200, media_type="application/json")


async def profile(request: Request) -> Response:
    started = time.perf_counter()
    user_id = _id(request, "user_id")
    state = _state(request)
    view = await state.customers.view(user_id)
    p, facts = view.profile, view.facts
    life = await state.redis.lrange(state.customers.keys.user(user_id, "life"), 0, -1)
    recent = list(facts.purchases[:10])
    due = list(p.replenishments_due)
    active = state.customers.active(view)
    infos = await state.reader.items([x.item_id for x in recent] + [r.item_id for r in due]
                                     + [i for o in active for i in o.items])
    active = still_fit(active, infos, view.state)
    title = lambda i: infos[i].title if i in infos else None  # noqa: E731
    rfm = p.rfm
    body = ProfileAnswer(
        request_id=request_id(request), user_id=user_id, clock=iso(view.clock),
        known=facts.first_seen_ts is not None, segment=p.segment,
        segment_reason=p.segment_reason, lifecycle=p.lifecycle,
        lifecycle_history=lifecycle_history(life),
        rfm=RFMOut(rfm.recency_days, rfm.frequency, rfm.monetary, rfm.r, rfm.f, rfm.m,
                   rfm.code) if rfm else None,
        p_alive=p.p_alive, churn_risk=p.churn_risk,
        tier=TierOut(p.tier.tier, p.tier.window_spend, p.tier.next_tier, p.tier.gap),
        top_categories=list(p.top_categories), preferred_source=p.preferred_source,
        price_band=p.price_band, promotion_sensitivity=p.promotion_sensitivity,
        dislikes={tag: str(reason.get("why", "")) for tag, reason in view.state.dislikes.items()},
        recent_purchases=[PurchaseOut(x.order_id, x.item_id, title(x.item_id), iso(x.ts),
                                      x.quantity, x.amount) for x in recent],
        replenishments_due=[ReplenishmentOut(r.item_id, title(r.item_id), r.interval_days,
                                             iso(r.last_purchase_ts), iso(r.runout_ts), r.basis)
                            for r in due],
        active_offers=[_offer_out(o, infos, view.clock) for o in active],
    )
    TIMED["profile"].observe(time.perf_counter() - started)
    return json(body)


async def post_events(request: Request) -> Response:
    started = time.perf_counter()
    state = _state(request)
    serving = state.settings.serving
    if "json" not in request.headers.get("content-type", "application/json"):
        raise UnsupportedMediaType("send application/json: one event object or an array")
    body = await _read_body(request, serving.max_body_bytes)
    try:
        events = decode_events(body) if body.lstrip()[:1] == b"[" else [decode_event(body)]
    except DecodeError as exc:
        REJECTED.labels("invalid").inc()
        raise InvalidInput(exc.reason) from None
    if not events:
        raise InvalidInput("the batch is empty")
    if len(events) > serving.max_batch:
        REJECTED.labels("too_many").inc()
        raise PayloadTooLarge(f"at most {serving.max_batch} events per request")
    engine = sorted({t for e in events if (t := event_type(e)) in ENGINE_TYPES})
    if engine:
        try:
            require_admin(request)
        except (Forbidden, Unauthorized) as exc:
            REJECTED.labels("engine_type").inc()
            raise type(exc)(f"{', '.join(engine)}: written by Aisle or an admin operation "
                            f"(DELETE /v1/users/{{id}}, /v1/admin/experiments); posting it "
                            f"needs the admin key ({exc})") from None
    try:
        producer = await state.producer.get()
        async with asyncio.timeout(5):
            await producer.send_events(events)
    except (KafkaError, TimeoutError, BrokerUnavailable) as exc:
        state.producer.last_send_ok = False
        REJECTED.labels("broker").inc()
        raise BrokerUnavailable(f"events not accepted, broker error: {exc!r}") from None
    state.producer.last_send_ok = True
    ACCEPTED.inc(len(events))
    TIMED["events"].observe(time.perf_counter() - started)
    return json(Accepted(request_id(request), len(events), [e.event_id for e in events]), 202)


async def _read_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"body over {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"body over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_admin(request: Request) -> None:
    """Admin calls carry ``Authorization: Bearer <AISLE_SERVING__ADMIN_API_KEY>``."""
    key = _state(request).settings.serving.admin_api_key
    if key is None:
        raise Forbidden("admin operations are off: set AISLE_SERVING__ADMIN_API_KEY")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise Unauthorized("missing or wrong admin API key")


async def erase_user(request: Request) -> Response:
    """The right to be forgotten: a ``user.erased`` event removes the customer from every
    key, the fold-in vector, offers and future retrains (see docs/privacy.md)."""
    require_admin(request)
    user_id = _id(request, "user_id")
    erased = UserErased(event_id=f"erase-{uuid.uuid4().hex}", occurred_at=datetime.now(UTC),
                        user_id=user_id, source="aisle.admin")
    response = await _record(request, erased, "erasure")
    state = _state(request)
    state.service.forget(user_id)  # this process's per-customer caches
    state.experiments.forget(user_id)  # and its experiment variants' services'
    return response


async def healthz(request: Request) -> Response:
    return json(Health("ok", {}))


async def readyz(request: Request) -> Response:
    state = _state(request)
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(0.5):
            await state.redis.ping()
        checks["store"] = "ok"
    except Exception as exc:  # any failure means "not ready", and says which
        checks["store"] = f"unavailable: {type(exc).__name__}"
    checks["model"] = "ok" if state.holder.current else "no model yet (serving popular items)"
    checks["broker"] = ("not connected yet" if not state.producer.started
                        else "ok" if state.producer.last_send_ok else "last send failed")
    ready = checks["store"] == "ok"
    return json(Health("ready" if ready else "unavailable", checks, state.holder.version),
                200 if ready else 503)


async def metrics(request: Request) -> Response:
    state = _state(request)
    reader, related = state.reader, state.service.related_cache
    CACHE.labels("hits").set(reader.hits)
    CACHE.labels("misses").set(reader.misses)
    for what, value in (("entries", len(related)), ("stale_answers", related.stale_answers),
                        ("refreshes", related.refreshes), ("queued", related.queued)):
        RELATED_CACHE.labels(what).set(value)
    for what, value in (("entries", reader.cached_items), ("reads", reader.item_reads),
                        ("invalidated", reader.catalog_invalidated)):
        CATALOG_CACHE.labels(what).set(value)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return json(openapi_document())


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


async def static_ok(request: Request) -> Response:
    """A trivial endpoint on the same server: the serving benchmark's baseline."""
    return json({"ok": True})


ROUTES = [
    Route("/v1/items/{item_id}/related", related, methods=["GET"]),
    Route("/v1/users/{user_id}/recommendations", recommendations, methods=["GET"]),
    Route("/v1/users/{user_id}/offers", offers, methods=["GET"]),
    Route("/v1/users/{user_id}/profile", profile, methods=["GET"]),
    Route("/v1/events", post_events, methods=["POST"]),
    Route("/v1/users/{user_id}", erase_user, methods=["DELETE"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/v1/ping", static_ok, methods=["GET"]),
]


# ---------------------------------------------------------------- experiments (A/B)

EXPOSURES = Counter("aisle_experiment_exposures_total", "exposure events logged", ["result"])


async def _assign(state: Any, user_id: str, surface: str,
                  view: CustomerView | None = None) -> list[Assignment]:
    """The customer's variants on ``surface``. The segment is derived (from ``view`` if
    already read) only for experiments that target segments."""
    known = state.experiments.assign_now(user_id, surface)
    if known is not None:  # most requests: nothing to wait for
        return known  # type: ignore[no-any-return]

    async def segment_of() -> str:
        seen = view if view is not None else await state.customers.view(user_id, derive=False)
        return (await state.customers.derive(seen)).profile.segment

    return await state.experiments.assign(user_id, surface, segment_of)  # type: ignore[no-any-return]


_SENDING: set[asyncio.Task[None]] = set()


async def _expose(request: Request, assignments: list[Assignment], user_id: str,
                  items: list[str]) -> None:
    """Log one exposure per experiment of this served answer. The send is handed to the
    producer and not awaited: waiting for the broker's ack cost 12.6 ms per answer
    (benchmarks/README.md), and the customer's next event, produced later on the same
    partition, still comes after it. If the broker is away the customer still gets the
    answer; the lost exposure is counted (``aisle_experiment_exposures_total{result=
    "lost"}``) and logged. The producer flushes pending sends when the API stops."""
    if not assignments:
        return
    state = _state(request)
    events = state.experiments.exposures(assignments, user_id, request_id(request), items)
    task = asyncio.create_task(_send_exposures(state, events))
    _SENDING.add(task)
    task.add_done_callback(_SENDING.discard)


async def drain_exposures() -> None:
    """Wait for exposure sends still in flight (the API is stopping)."""
    if _SENDING:
        await asyncio.gather(*list(_SENDING), return_exceptions=True)


async def _send_exposures(state: Any, events: list[Any]) -> None:
    try:
        producer = await state.producer.get()
        async with asyncio.timeout(10):
            await producer.send_events(events)
        EXPOSURES.labels("logged").inc(len(events))
    except (BrokerUnavailable, KafkaError, TimeoutError) as exc:
        EXPOSURES.labels("lost").inc(len(events))
        log.warning("exposures not logged: %r", exc)


async def _admin_body(request: Request) -> bytes:
    require_admin(request)
    if "json" not in request.headers.get("content-type", "application/json"):
        raise UnsupportedMediaType("send the experiment as application/json")
    return await _read_body(request, 100_000)


def _xid(request: Request) -> str:
    value = request.path_params["experiment_id"]
    if not re.match(r"^[a-z0-9][a-z0-9_-]{0,39}$", value):
        raise InvalidInput("experiment_id must be 1-40 characters of a-z 0-9 _ -")
    return str(value)


async def _record(request: Request, event: Any, what: str = "experiment change",
                  ) -> Response:
    """Write one admin event; 202 once Kafka has it, 503 if the broker is away."""
    producer = await _state(request).producer.get()
    try:
        async with asyncio.timeout(5):
            await producer.send_events([event])
    except (KafkaError, TimeoutError) as exc:
        raise BrokerUnavailable(f"{what} not recorded, broker error: {exc!r}") from None
    return json(Accepted(request_id(request), 1, [event.event_id]), 202)


async def create_experiment(request: Request) -> Response:
    """Validate a definition and record it as ``experiment.created``; the workers fold it
    and every API replica serves it within ``cache_ttl_s`` after that."""
    body = await _admin_body(request)
    try:
        spec = msgspec.json.decode(body, type=ExperimentSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(str(exc)) from None
    registry = _state(request).experiments
    await registry.check_new(spec)
    return await _record(request, ExperimentCreated(
        event_id=new_event_id("c", spec.id), occurred_at=datetime.now(UTC), payload=spec,
        source="aisle.admin"))


async def update_experiment(request: Request) -> Response:
    """Change fields of a running experiment (weights, params, targeting, end, metrics).
    Existing customers keep their buckets: see models/assignment.py for who moves."""
    body = await _admin_body(request)
    xid = _xid(request)
    try:
        change = msgspec.json.decode(body, type=dict[str, Any])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"send a JSON object of the fields to change: {exc}") from None
    spec = await _state(request).experiments.merged_update(xid, change)
    return await _record(request, ExperimentUpdated(
        event_id=new_event_id("u", xid), occurred_at=datetime.now(UTC), payload=spec,
        source="aisle.admin"))


async def stop_experiment(request: Request) -> Response:
    require_admin(request)
    xid = _xid(request)
    await _state(request).experiments.require(xid)
    return await _record(request, ExperimentStopped(
        event_id=new_event_id("s", xid), occurred_at=datetime.now(UTC),
        payload=ExperimentRef(experiment_id=xid), source="aisle.admin"))


async def list_experiments(request: Request) -> Response:
    defs = await _state(request).experiments.definitions()
    now = time.time()
    return json({"experiments": [d.summary(now) for _, d in sorted(defs.items())]})


async def experiment_results(request: Request) -> Response:
    xid = _xid(request)
    with_series = _query(request).get("series", "false").lower() in ("1", "true", "yes")
    return json(await _state(request).experiments.results(xid, with_series))


ROUTES += [
    Route("/v1/admin/experiments", create_experiment, methods=["POST"]),
    Route("/v1/admin/experiments/{experiment_id}", update_experiment, methods=["PATCH"]),
    Route("/v1/admin/experiments/{experiment_id}/stop", stop_experiment, methods=["POST"]),
    Route("/v1/experiments", list_experiments, methods=["GET"]),
    Route("/v1/experiments/{experiment_id}/results", experiment_results, methods=["GET"]),
]
