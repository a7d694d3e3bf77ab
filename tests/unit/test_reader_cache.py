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


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(ENTRY, min_size=1, max_size=8), asked=st.lists(
    st.integers(0, 7), min_size=1, max_size=10), feed=st.booleans(),
    checked_ago=st.floats(0.0, 3.0))
def test_fresh_items_is_items_without_a_read(entries, asked, feed, checked_ago) -> None:
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
    ids = [f"i{n}" for n in asked]
    quick = reader.fresh_items(ids)
    if quick is None:
        return
    # The long way must give the same answer, and without touching the store.
    assert asyncio.run(reader._lookup(ids)) == quick
    assert all(reader._items[i][1] is not None for i in quick)
