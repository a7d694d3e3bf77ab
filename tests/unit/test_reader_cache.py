"""The catalog cache's no-await path answers exactly what the awaited one would, and
only when the awaited one would not have read the store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from feature_store.keys import Keys
from feature_store.reader import FeatureReader, ItemInfo


class NoStore:
    """A client that must not be used: a call means items() wanted a round trip."""

    def register_script(self, script: str) -> None:
        return None

    def pipeline(self, **kw: Any) -> Any:
        raise AssertionError("read the store")


ENTRY = st.one_of(st.none(), st.tuples(st.floats(0.0, 120.0), st.booleans()))


def cached(entries: list[Any], feed: bool, checked_ago: float) -> FeatureReader:
    """A reader whose catalog cache holds ``entries`` (item ``i<n>``: None for not
    cached, else (age in s, whether the catalog knows it)); with ``feed``, following the
    change feed, last checked ``checked_ago`` seconds ago."""
    reader = FeatureReader(NoStore(), Keys("t", 2), ttl=2.0, revalidate_s=2.0,  # type: ignore[arg-type]
                           catalog_max_age_s=60.0 if feed else None)
    now = time.monotonic()
    for n, entry in enumerate(entries):
        if entry is not None:
            age, known = entry
            info = ItemInfo(f"i{n}", f"title {n}") if known else None
            reader._items[f"i{n}"] = (now - age, info)
    if feed:
        reader._catalog_seq = [0, 0]
        reader._catalog_checked = now - checked_ago
    return reader


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(ENTRY, min_size=1, max_size=8), asked=st.lists(
    st.integers(0, 7), min_size=1, max_size=10), feed=st.booleans(),
    checked_ago=st.floats(0.0, 3.0))
def test_fresh_items_is_items_without_a_read(entries, asked, feed, checked_ago) -> None:
    reader = cached(entries, feed, checked_ago)
    ids = [f"i{n}" for n in asked]
    quick = reader.fresh_items(ids)
    if quick is None:
        return
    # The long way must give the same answer, and without touching the store.
    assert asyncio.run(reader._lookup(ids)) == quick
    assert all(reader._items[i][1] is not None for i in quick)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(ENTRY, min_size=1, max_size=8), asked=st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from(["kept", "equal", "other", "none"])),
    min_size=1, max_size=10), feed=st.booleans(), checked_ago=st.floats(0.0, 3.0))
def test_same_items_is_the_lookup_finding_the_very_entries(entries, asked, feed,
                                                          checked_ago) -> None:
    """A kept answer's items are still listed without a lookup (``same_items``) exactly
    when the no-await lookup would have found every one of them as the very entry the
    answer was made from; an equal entry read again since counts as not known."""
    reader = cached(entries, feed, checked_ago)
    ids = [f"i{n}" for n, _ in asked]
    held = [reader._items.get(i, (0.0, None))[1] for i in ids]
    then = [h if how == "kept" else None if how == "none" or h is None
            else ItemInfo(h.item_id, h.title) if how == "equal"
            else ItemInfo(h.item_id, "another title")
            for h, (_, how) in zip(held, asked, strict=True)]
    fresh = reader.fresh_items(ids)
    looked_up = fresh is not None and all(
        fresh.get(i) is t for i, t in zip(ids, then, strict=True))
    assert reader.same_items(ids, then) == looked_up
