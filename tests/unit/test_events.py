"""The one schema: valid events decode, anything else is a DecodeError with a reason."""

from __future__ import annotations

import doctest

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import events as ev

VIEW = {"type": "product.viewed", "event_id": "e1", "user_id": "u1",
        "occurred_at": "2011-12-01T10:00:00+00:00", "payload": {"item_id": "85123A"}}


def test_doctests() -> None:
    assert doctest.testmod(ev).failed == 0


def test_round_trip_every_type_keeps_its_class() -> None:
    docs = {
        "order.placed": {"order_id": "o1", "lines": [
            {"item_id": "a", "quantity": 2, "unit_price": 1.25, "currency": "GBP"}]},
        "preference.stated": {"dislikes": ["material:polyester"]},
        "catalog.item_upserted": {"item_id": "a", "title": "Mug",
                                  "attributes": {"material": "clay"}},
        "review.submitted": {"item_id": "a", "rating": 2, "tags": ["fit:small"]},
        "user.erased": {},
    }
    for type_, payload in docs.items():
        raw = msgspec.json.encode({**VIEW, "type": type_, "payload": payload})
        event = ev.decode_event(raw)
        assert ev.event_type(event) == type_
        assert ev.decode_event(ev.encode_event(event)) == event


@pytest.mark.parametrize("mutate,fragment", [
    (lambda d: d.pop("event_id"), "event_id"),
    (lambda d: d.update(type="product.exploded"), "unknown event type"),
    (lambda d: d.update(occurred_at="2011-12-01T10:00:00"), "timezone"),
    (lambda d: d.update(occurred_at="1970-01-01T00:00:00Z"), "out of range"),
    (lambda d: d.update(occurred_at="2999-01-01T00:00:00Z"), "out of range"),
    (lambda d: d.update(user_id=None), "needs a user_id"),
    (lambda d: d.update(user_id="has space"), "user_id"),
    (lambda d: d["payload"].update(item_id=7), "item_id"),
    (lambda d: d["payload"].update(surprise=1), "surprise"),
])
def test_invalid_events_say_why(mutate, fragment) -> None:
    doc = {**VIEW, "payload": dict(VIEW["payload"])}
    mutate(doc)
    with pytest.raises(ev.DecodeError) as err:
        ev.decode_event(msgspec.json.encode(doc))
    assert fragment in err.value.reason


def test_absurd_order_values_are_rejected() -> None:
    for line in ({"item_id": "a", "quantity": 0, "unit_price": 1},
                 {"item_id": "a", "quantity": 1, "unit_price": -1},
                 {"item_id": "a", "quantity": 10**9, "unit_price": 1},
                 {"item_id": "a", "quantity": 1, "unit_price": 1, "currency": "pounds"}):
        doc = {**VIEW, "type": "order.placed", "payload": {"order_id": "o", "lines": [line]}}
        with pytest.raises(ev.DecodeError):
            ev.decode_event(msgspec.json.encode(doc))


def test_guest_orders_route_by_order_id() -> None:
    doc = {**VIEW, "type": "order.placed", "user_id": None,
           "payload": {"order_id": "536365", "lines": [
               {"item_id": "a", "quantity": 1, "unit_price": 1}]}}
    event = ev.decode_event(msgspec.json.encode(doc))
    assert event.user_id is None and event.routing_key == "536365"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_become_an_event_or_a_reason(data: bytes) -> None:
    try:
        ev.decode_event(data)
    except ev.DecodeError as err:
        assert err.reason


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                    max_leaves=20))
def test_any_json_becomes_an_event_or_a_reason(value: object) -> None:
    doc = {**VIEW, "payload": value} if isinstance(value, dict) else value
    try:
        ev.decode_event(msgspec.json.encode(doc))
    except ev.DecodeError as err:
        assert err.reason


def test_json_schema_names_every_type() -> None:
    schema = ev.json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(ev.EVENT_TYPES)
