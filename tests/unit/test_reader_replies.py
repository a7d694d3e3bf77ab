"""The customer read's reply parsers (iterating in C) give what the plain loops gave."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feature_store.reader import (
    UserState,
    _floats,
    _floats_of,
    _ints_of,
    _pairs,
    _scored,
    _scored_and_weights,
)

MEMBER = st.binary(min_size=1, max_size=8).filter(lambda b: b.isascii())
SCORE = st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: repr(f).encode())


@given(st.dictionaries(MEMBER, SCORE, max_size=40))
def test_scored_pairs_and_weights_match_one_loop_over_the_flat_reply(d: dict[bytes, bytes],
                                                                      ) -> None:
    flat = [x for kv in d.items() for x in kv]
    expected = [(m, float(v)) for m, v in d.items()]
    assert _scored(flat) == expected
    pairs, weights = _scored_and_weights(flat)
    assert pairs == expected
    assert weights == {m.decode(): float(v) for m, v in d.items()}
    assert _pairs(flat) == d
    assert _floats(d) == {m.decode(): float(v) for m, v in d.items()}


def test_an_odd_flat_reply_is_refused() -> None:
    for parse in (_pairs, _scored, _scored_and_weights):
        with pytest.raises(ValueError, match="odd"):
            parse([b"a", b"1", b"b"])


def test_weights_are_made_from_the_interactions_when_not_given() -> None:
    state = UserState("u", [], {}, {}, {}, {}, [(b"a", 1.5), ("b", 2.0)], None, {})
    assert state.weights == {"a": 1.5, "b": 2.0}
    assert state.weights is state.weights  # made once
    # Members that came as str already (a client decoding replies) read the same.
    assert _floats({"x": b"1", b"y": "2"}) == {"x": 1.0, "y": 2.0}


@given(st.lists(st.one_of(
    st.floats(allow_nan=False).map(lambda f: repr(f).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: b"%.17g" % f),
    st.integers(-10**20, 10**20).map(lambda n: str(n).encode())), max_size=30))
def test_numbers_parse_as_float_parses_them(raw: list[bytes]) -> None:
    got = _floats_of(raw)
    assert got == [float(x) for x in raw]
    assert all(type(x) is float for x in got)


def test_what_json_does_not_take_goes_through_float_and_int() -> None:
    assert _floats_of([b"1.5", b"inf", b"-inf"]) == [1.5, math.inf, -math.inf]
    assert _floats_of([b"1", "2.5"]) == [1.0, 2.5]  # a str among bytes
    assert _ints_of([b"3", b"12"]) == [3, 12]
    assert _ints_of([b"3", "4"]) == [3, 4]
    with pytest.raises(ValueError):
        _ints_of([b"3.5"])  # as int() refuses it
