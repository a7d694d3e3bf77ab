"""Push rules (priority, consent, dedupe, caps, quiet hours), change detection, folds."""

from __future__ import annotations

import doctest
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from aisle.settings import PushSettings, Settings
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.updates import Folder
from push import candidate, rules, watch
from push.candidate import CandidateItem, build_candidate, decode_candidate, encode_candidate
from push.rules import Draft, Fatigue, Trigger, decide, quiet_until
from streams import events as ev

S = PushSettings()
K = Keys("t", 4)
FOLDER = Folder(K, Settings().features, Settings().model, S)
# 12:00 in London (BST): not quiet.
NOON = datetime(2024, 5, 1, 11, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0


def draft(reason: str = "cart_abandon", ref: str = "", due: float = NOON, **kw: object) -> Draft:
    t = Trigger("u1", reason, ref, due)
    kw.setdefault("expires_ts", due + 24 * HOUR)
    kw.setdefault("dedupe_key", f"{reason}:{ref}")
    return Draft(t, reason, (CandidateItem("i1", "Kettle", 9.0),), **kw)  # type: ignore[arg-type]


def fatigue(**kw: object) -> Fatigue:
    base: dict[str, object] = {"known": True, "opted_in": True, "timezone": "Europe/London"}
    return Fatigue(**{**base, **kw})  # type: ignore[arg-type]


def outcomes(verdicts: list[rules.Verdict]) -> list[tuple[str, str, str]]:
    return [(v.draft.reason, v.outcome, v.rule) for v in verdicts]


def test_doctests() -> None:
    for module in (rules, candidate):
        assert doctest.testmod(module).failed == 0


def test_priority_decides_who_gets_the_daily_slots() -> None:
    got = decide([draft("winback", "churned"), draft("cart_abandon"),
                  draft("offer_expiring", "of1")], fatigue(), NOON, S)
    assert outcomes(got) == [("offer_expiring", "emitted", "offer_expiring"),
                             ("cart_abandon", "emitted", "cart_abandon"),
                             ("winback", "dropped", "cap_day")]


def test_caps_count_what_was_pushed_before() -> None:
    week = tuple((NOON - d * 86400 - 1, "price_drop") for d in range(1, 6))
    assert outcomes(decide([draft()], fatigue(pushed=week), NOON, S))[0][2] == "cap_week"
    yesterday = ((NOON - 86400 - 1, "cart_abandon"),) * 3
    assert outcomes(decide([draft()], fatigue(pushed=yesterday), NOON, S))[0][2] == \
        "cap_reason_week"
    today = ((NOON - HOUR, "cart_abandon"),)
    assert outcomes(decide([draft()], fatigue(pushed=today), NOON, S))[0][2] == "cap_reason_day"
    assert outcomes(decide([draft("price_drop", "i9")], fatigue(pushed=today), NOON, S))[0][1] \
        == "emitted"


@pytest.mark.parametrize(("f", "d", "rule"), [
    (fatigue(known=False), draft(), "unknown_customer"),
    (fatigue(opted_in=False), draft(), "opted_out"),
    (fatigue(), draft(drop="purchased"), "purchased"),
    (fatigue(), draft(expires_ts=NOON), "expired"),
    (fatigue(dedupe={"cart_abandon:": NOON - 86400}), draft(), "duplicate"),
])
def test_suppression_rules(f: Fatigue, d: Draft, rule: str) -> None:
    assert outcomes(decide([d], f, NOON, S)) == [(d.reason, "dropped", rule)]


def test_dedupe_key_expires_after_its_window() -> None:
    f = fatigue(dedupe={"cart_abandon:": NOON - S.dedupe_window_s - 1})
    assert outcomes(decide([draft()], f, NOON, S))[0][1] == "emitted"


def test_quiet_hours_hold_until_the_window_opens_or_drop_when_it_expires_first() -> None:
    night = datetime(2024, 5, 1, 23, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    opens = datetime(2024, 5, 2, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    f = fatigue(timezone="Asia/Shanghai")
    held = decide([draft(due=night)], f, night, S)[0]
    assert (held.outcome, held.hold_until) == ("held", opens)
    short = decide([draft(due=night, expires_ts=night + HOUR)], f, night, S)[0]
    assert (short.outcome, short.rule) == ("dropped", "quiet_hours_expired")
    # Quiet hours are the customer's: 23:30 in Shanghai is 16:30 in London.
    assert decide([draft(due=night)], fatigue(), night, S)[0].outcome == "emitted"


def test_quiet_hours_across_a_daylight_saving_change() -> None:
    # London springs forward on 2024-03-31: 09:00 that morning is 08:00 UTC.
    at = datetime(2024, 3, 31, 0, 30, tzinfo=UTC).timestamp()
    opens = quiet_until(at, "Europe/London", S)
    assert opens == datetime(2024, 3, 31, 8, 0, tzinfo=UTC).timestamp()
    daytime = PushSettings(quiet_start_h=1, quiet_end_h=6)  # a window that does not wrap
    assert quiet_until(datetime(2024, 5, 1, 7, tzinfo=UTC).timestamp(), "UTC", daytime) is None
    assert quiet_until(datetime(2024, 5, 1, 2, tzinfo=UTC).timestamp(), "UTC", daytime) == \
        datetime(2024, 5, 1, 6, tzinfo=UTC).timestamp()
    assert quiet_until(at, "Europe/London", PushSettings(quiet_start_h=0, quiet_end_h=0)) is None


def test_candidate_document_round_trips_and_publishes_a_schema() -> None:
    c = build_candidate(candidate_id=candidate.candidate_id("u1|cart_abandon|", NOON),
                        user_id="u1", source="aisle/push", clock=NOON, reason="cart_abandon",
                        priority=70, items=[CandidateItem("i1", "Kettle", 9.0, "GBP")],
                        offer=None, expires_ts=NOON + HOUR, dedupe_key="cart_abandon:x",
                        variables={"count": "1"})
    assert decode_candidate(encode_candidate(c)) == c
    assert c.time == "2024-05-01T11:00:00Z" and c.data.template == "push.cart_abandon.v1"
    schema = candidate.json_schema()["$defs"]
    assert {"specversion", "id", "source", "type", "subject", "data"} <= \
        set(schema["Candidate"]["properties"])
    assert set(schema["CandidateData"]["properties"]["reason"]["enum"]) == set(rules.PRIORITY)


def test_consent_names_a_real_time_zone() -> None:
    doc = (b'{"type":"consent.updated","event_id":"c1","user_id":"u1",'
           b'"occurred_at":"2024-05-01T00:00:00Z","payload":{"timezone":"%s"}}')
    assert ev.decode_event(doc % b"Asia/Shanghai").payload.timezone == "Asia/Shanghai"
    for bad in (b"America", b"../etc/passwd", b"Mars/Olympus"):
        with pytest.raises(ev.DecodeError, match="time zone"):
            ev.decode_event(doc % bad)


# ------------------------------------------------------------------ change detection

def upsert(item: str, minutes: float, price: float, stock: int | None = None,
           ) -> ev.CatalogItemUpserted:
    return ev.CatalogItemUpserted(
        event_id=f"c-{item}-{minutes}", occurred_at=datetime.fromtimestamp(NOON, UTC)
        + timedelta(minutes=minutes), payload=ev.CatalogItem(item_id=item, title=item,
                                                             price=price, stock=stock))


def test_changes_find_price_drops_and_restocks_in_log_order() -> None:
    stored = {"a": watch._Item(NOON, 10.0, 5, False), "b": watch._Item(NOON, 10.0, 0, False),
              "c": watch._Item(NOON, 10.0, 5, True)}
    found = watch.changes([
        upsert("a", 1, 9.6),            # 4 %: not a drop
        upsert("a", 2, 9.0),            # 10 % below the stored price... of the 9.6 upsert
        upsert("b", 1, 10.0, 4),        # back in stock
        upsert("b", -5, 1.0, 4),        # older than the store: ignored, like the store does
        upsert("c", 1, 1.0),            # removed items do not announce
        upsert("new", 1, 1.0),          # nothing to compare with
    ], stored, 5.0)
    assert [(c.event.payload.item_id, c.kind, c.previous_price) for c in found] == [
        ("a", "price_drop", 9.6), ("b", "back_in_stock", 10.0)]


# ------------------------------------------------------------------ folds

OFFSETS = itertools.count()


def apply(store: MemoryStore, events: list[ev.AnyEvent]) -> None:
    for e in events:
        store.apply(FOLDER.shard(e), "t/0", [(e.event_id, next(OFFSETS), e.ts, FOLDER.fold(e))])


def at(minutes: float) -> datetime:
    return datetime.fromtimestamp(NOON, UTC) + timedelta(minutes=minutes)


def cart(minutes: float) -> ev.CartItemAdded:
    return ev.CartItemAdded(event_id=f"c{minutes}", occurred_at=at(minutes), user_id="u1",
                            payload=ev.CartLine(item_id="i1"))


def decided(minutes: float, due: float, outcome: str = "emitted",
            hold: float | None = None) -> ev.PushDecided:
    return ev.PushDecided(
        event_id=f"d{minutes}", occurred_at=at(minutes), user_id="u1",
        payload=ev.PushDecision(trigger="cart_abandon|", due_ts=due, outcome=outcome,  # type: ignore[arg-type]
                                rule="cart_abandon", candidate_id="pc-1",
                                dedupe_key="cart_abandon:k", items=["i1"],
                                hold_until_ts=hold))


def due(store: MemoryStore) -> dict[str, float]:
    return store.data.get(K.push_due(K.shard_of("u1")), {})


def test_cart_trigger_moves_with_the_last_add_and_survives_an_older_decision() -> None:
    store = MemoryStore(K, 86400)
    apply(store, [cart(0), cart(30)])
    assert due(store) == {"u1|cart_abandon|": NOON + 90 * 60}
    apply(store, [decided(91, NOON + 60 * 60)])  # decided on the first add's schedule
    assert due(store) == {"u1|cart_abandon|": NOON + 90 * 60}
    apply(store, [decided(92, NOON + 90 * 60)])
    assert due(store) == {}
    assert store.data[K.user("u1", "pushitems")] == {"i1": NOON + 92 * 60}
    assert store.data[K.user("u1", "pushkeys")] == {"cart_abandon:k": NOON + 92 * 60}
    assert store.data[K.push_stats(K.shard_of("u1"))] == {"emitted:cart_abandon": 2.0}


def test_held_trigger_comes_back_when_the_window_opens() -> None:
    store = MemoryStore(K, 86400)
    apply(store, [cart(0), decided(61, NOON + HOUR, "held", hold=NOON + 10 * HOUR)])
    assert due(store) == {"u1|cart_abandon|": NOON + 10 * HOUR}
    assert K.user("u1", "pushlog") not in store.data


def test_erasure_leaves_no_trace_in_push_state() -> None:
    store = MemoryStore(K, 86400)
    view = ev.ProductViewed(event_id="v", occurred_at=at(0), user_id="u1",
                            payload=ev.ItemRef(item_id="i7"))
    consent = ev.ConsentUpdated(event_id="cs", occurred_at=at(0), user_id="u1",
                                payload=ev.Consent(push=False, timezone="Asia/Tokyo"))
    offer = ev.OfferIssued(event_id="of", occurred_at=at(0), user_id="u1", payload=ev.OfferIssue(
        offer_id="of1", rule_id="r", policy_version="v", kind="winback_coupon", discount_pct=5,
        items=["i7"], expires_at=at(60 * 24 * 30), reason="r", trigger="t"))
    apply(store, [view, consent, offer, cart(1), decided(62, NOON + 61 * 60)])
    assert list(due(store)) == ["u1|offer_expiring|of1"]
    shard = K.shard_of("u1")
    assert store.data[K.push_watch(shard, "i7")] == {"u1": NOON}
    assert store.data[K.user("u1", "consent")]["tz"] == "Asia/Tokyo"
    apply(store, [ev.UserErased(event_id="x", occurred_at=at(70), user_id="u1")])
    assert not [k for k, v in store.data.items() if "u1" in k or "u1" in (v or {})
                if not k.endswith((":seen", ":stats", ":meta", ":wm"))]


def test_settings_reject_an_unknown_default_time_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        PushSettings(default_timezone="Europe/Atlantis")


def test_sweep_finds_replenishment_and_tier_gap_with_stable_ids() -> None:
    from models.customer import load_segment_rules
    from models.customer_types import CustomerFacts, Purchase
    from push.sweep import EMPTY, sweep_events

    day = 86400.0
    buys = tuple(Purchase(f"o{d}", "soap", NOON - d * day, 1, 135.0, "home") for d in (19, 9))
    facts = CustomerFacts(
        user_id="u1", first_seen_ts=NOON - 19 * day, last_seen_ts=NOON - 9 * day,
        first_order_ts=NOON - 19 * day, last_order_ts=NOON - 9 * day, orders=2,
        monetary=270.0, purchases=buys, promo_orders=0, sources={"web": 2},
        spend_by_month={"2024-04": 135.0, "2024-05": 135.0}, favorites=(), categories={})
    rules = load_segment_rules()
    got = sweep_events(facts, EMPTY, NOON, Settings(), rules)
    assert sorted((e.payload.reason, e.payload.ref) for e in got) == [
        ("replenish", f"soap@{int(NOON - 9 * day)}"), ("tier_nudge", "silver@2024-05@30.00")]
    assert got[0].payload.due_ts <= NOON
    assert [e.event_id for e in sweep_events(facts, EMPTY, NOON, Settings(), rules)] == \
        [e.event_id for e in got]
    # Five days earlier the run-out (in 6 days) was further off than the 3-day lead.
    earlier = sweep_events(facts, EMPTY, NOON - 5 * day, Settings(), rules)
    assert "replenish" not in {e.payload.reason for e in earlier}


def test_a_trigger_written_by_hand_is_parsed_not_fatal() -> None:
    assert Trigger.parse("u1|nonsense", 1.0) == Trigger("u1", "nonsense", "", 1.0)
    with pytest.raises(ev.DecodeError):
        ev.decode_event(b'{"type":"push.decided","event_id":"d","user_id":"u1",'
                        b'"occurred_at":"2024-05-01T00:00:00Z","payload":{"trigger":"x",'
                        b'"due_ts":1.0,"outcome":"held","rule":"r"}}')


def test_published_schema_file_is_current() -> None:
    """docs/push.schema.json is what the push team reads; `aisle push schema > …` renews it."""
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "push.schema.json"
    assert json.loads(path.read_text()) == candidate.json_schema()
