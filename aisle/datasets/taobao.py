"""Taobao UserBehavior → view, cart, favourite, order and catalog events.

``pv`` → :class:`ProductViewed`, ``cart`` → :class:`CartItemAdded` (quantity 1),
``fav`` → :class:`ProductFavorited`, ``buy`` → a one-line :class:`OrderPlaced` (quantity
1; the data has no prices, so 0.0 CNY). Each item gets a :class:`CatalogItemUpserted`
just before its first event. A session is a user's run of events with no gap over
:data:`SESSION_GAP_S`.

Rows left out, each counted under its reason: ``malformed row`` (not 5 columns),
``invalid id`` (user, item or category not a number of at most 20 digits),
``unknown behaviour``, ``invalid timestamp`` (not an integer, or out of the schema's
range) and ``earlier than the row before`` — the adapter streams and never sorts, so it
needs the file in time order (this extract is; the full 100M-row original is by user).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, Final

from aisle.datasets.csvfile import csv_rows
from aisle.datasets.stats import ReplayStats
from streams.events import (
    FUTURE_SLACK_S,
    MIN_TS,
    AnyEvent,
    CartItemAdded,
    CartLine,
    CatalogItem,
    CatalogItemUpserted,
    ItemRef,
    Order,
    OrderLine,
    OrderPlaced,
    ProductFavorited,
    ProductViewed,
)

NAME: Final = "taobao"
SOURCE: Final = "replay:taobao"
CURRENCY: Final = "CNY"
COLUMNS: Final = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
BEHAVIOURS: Final = ("pv", "cart", "fav", "buy")
SESSION_GAP_S: Final = 30 * 60
SKIP_OUT_OF_ORDER: Final = "earlier than the row before"

_NUMBER = re.compile(r"^\d{1,20}$")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One valid row. ``index`` is its 0-based position among the file's data rows."""

    index: int
    user_id: str
    item_id: str
    category: str
    behaviour: str
    ts: int

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.ts, UTC)

    @property
    def event_id(self) -> str:
        return f"tb-{self.behaviour}-{self.user_id}-{self.item_id}-{self.ts}-{self.index}"


def parse_row(index: int, row: list[str], max_ts: float) -> Behaviour | str:
    """A CSV row (in :data:`COLUMNS` order) → a valid behaviour, or the reason to skip it."""
    if len(row) != len(COLUMNS):
        return "malformed row"
    user_id, item_id, category_id, behaviour, ts_text = (value.strip() for value in row)
    if not (_NUMBER.match(user_id) and _NUMBER.match(item_id) and _NUMBER.match(category_id)):
        return "invalid id"
    if behaviour not in BEHAVIOURS:
        return "unknown behaviour"
    try:
        ts = int(ts_text)
    except ValueError:
        return "invalid timestamp"
    if not MIN_TS <= ts <= max_ts:
        return "invalid timestamp"
    return Behaviour(index, user_id, item_id, f"c{category_id}", behaviour, ts)


def catalog_event(first: Behaviour) -> CatalogItemUpserted:
    """A stand-in catalog entry: the data has no titles or prices, only a category."""
    item = CatalogItem(item_id=first.item_id, title=f"Taobao item {first.item_id}",
                       category=first.category, currency=CURRENCY)
    return CatalogItemUpserted(event_id=f"tb-cat-{first.item_id}", occurred_at=first.when,
                               source=SOURCE, payload=item)


def behaviour_event(row: Behaviour, session_id: str) -> AnyEvent:
    """The event a behaviour row stands for."""
    common: dict[str, Any] = {"event_id": row.event_id, "occurred_at": row.when,
                              "user_id": row.user_id, "session_id": session_id,
                              "source": SOURCE}
    if row.behaviour == "pv":
        return ProductViewed(**common, payload=ItemRef(row.item_id, category=row.category))
    if row.behaviour == "fav":
        return ProductFavorited(**common, payload=ItemRef(row.item_id, category=row.category))
    if row.behaviour == "cart":
        return CartItemAdded(**common, payload=CartLine(row.item_id, 1, category=row.category))
    line = OrderLine(row.item_id, 1, 0.0, CURRENCY, category=row.category)
    order_id = f"tb-{row.user_id}-{row.ts}-{row.item_id}"
    return OrderPlaced(**common, payload=Order(order_id=order_id, lines=[line]))


class Sessions:
    """Session ids: ``tb-s-<user>-<n>``, n counting up after each gap over the limit.

    >>> s = Sessions()
    >>> [s.session_of("7", t) for t in (0, 1800, 3601)]
    ['tb-s-7-0', 'tb-s-7-0', 'tb-s-7-1']
    """

    def __init__(self, gap_s: int = SESSION_GAP_S) -> None:
        self.gap_s = gap_s
        self._last: dict[str, tuple[int, int]] = {}  # user -> (session number, last ts)

    def session_of(self, user_id: str, ts: int) -> str:
        number, last = self._last.get(user_id, (0, ts))
        if ts - last > self.gap_s:
            number += 1
        self._last[user_id] = (number, ts)
        return f"tb-s-{user_id}-{number}"


def events_from_rows(rows: Iterable[list[str]], stats: ReplayStats,
                     first_index: int = 0) -> Iterator[AnyEvent]:
    """Data rows (no header) → events, counting into ``stats``."""
    max_ts = datetime.now(UTC).timestamp() + FUTURE_SLACK_S
    sessions, catalogued, latest = Sessions(), set[str](), 0
    for index, row in enumerate(rows, start=first_index):
        stats.rows_read += 1
        parsed = parse_row(index, row, max_ts)
        if isinstance(parsed, Behaviour) and parsed.ts < latest:
            parsed = SKIP_OUT_OF_ORDER
        if isinstance(parsed, str):
            stats.skip(parsed)
            continue
        latest = parsed.ts
        if parsed.item_id not in catalogued:
            catalogued.add(parsed.item_id)
            yield stats.emitted(catalog_event(parsed))
        yield stats.emitted(behaviour_event(parsed, sessions.session_of(parsed.user_id,
                                                                        parsed.ts)))


def read_events(path: Path, stats: ReplayStats,
                limit_rows: int | None = None) -> Iterator[AnyEvent]:
    """The events of a UserBehavior CSV (gzip or plain, header optional)."""
    rows = csv_rows(path)
    first = next(rows, None)
    if first is None:
        return
    has_header = [value.strip() for value in first] == list(COLUMNS)
    data = rows if has_header else chain([first], rows)
    yield from events_from_rows(islice(data, limit_rows), stats)
