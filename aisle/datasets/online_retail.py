"""UCI Online Retail → order, cancellation and catalog events, in event-time order.

One invoice is one basket: its lines become one :class:`OrderPlaced` (``C…`` invoices one
:class:`OrderCancelled`, quantities made positive). An invoice's time is its last line's
time, so a basket is "placed" when complete. Rows with no CustomerID are guest orders.
Each item's :class:`CatalogItemUpserted` comes before its first order, from the first row
that sells it (title, price, and a category and colour guessed from the title).

Which rows are left out, and why, is in :mod:`aisle.datasets.retail_rows`. One more
reason is counted here: ``late line of a closed invoice``, a line more than
:data:`GRACE_S` of data time after its invoice's previous one (never in the UCI file).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Final

from aisle.datasets.csvfile import csv_rows
from aisle.datasets.retail_rows import COLUMNS, CURRENCY, InvoiceLine, parse_row
from aisle.datasets.stats import ReplayStats
from aisle.datasets.titles import category_of, colour_of
from streams.events import (
    AnyEvent,
    Cancellation,
    CatalogItem,
    CatalogItemUpserted,
    Order,
    OrderCancelled,
    OrderLine,
    OrderPlaced,
)

__all__ = ["COLUMNS", "GRACE_S", "MAX_ORDER_LINES", "NAME", "SOURCE", "events_from_rows",
           "read_events"]

NAME: Final = "online_retail"
SOURCE: Final = "replay:online_retail"
# An invoice stays open this long (data time) after its last line. The file is in
# InvoiceDate order, but one invoice (542806) is interrupted by another's lines.
GRACE_S: Final = 300.0
# Order.lines' max_length in streams.events; longer invoices (one: 573585) go in parts.
MAX_ORDER_LINES: Final = 1000

SKIP_LATE_LINE: Final = "late line of a closed invoice"


# ---------------------------------------------------------------- lines → events


def catalog_event(first: InvoiceLine) -> CatalogItemUpserted:
    """The catalog entry of an item, from the first row that sells it."""
    colour = colour_of(first.title)
    item = CatalogItem(item_id=first.line.item_id, title=first.title,
                       category=category_of(first.title), price=first.line.unit_price,
                       currency=CURRENCY, attributes={"colour": colour} if colour else {})
    return CatalogItemUpserted(event_id=f"or-cat-{first.line.item_id}", occurred_at=first.when,
                               source=SOURCE, payload=item)


@dataclass(slots=True)
class OpenInvoice:
    number: str
    cancelled: bool
    user_id: str | None
    last: datetime
    lines: list[OrderLine] = field(default_factory=list)

    def add(self, line: InvoiceLine) -> None:
        self.lines.append(line.line)
        if line.when > self.last:
            self.last = line.when


def invoice_events(invoice: OpenInvoice) -> list[OrderPlaced | OrderCancelled]:
    """One event per invoice; an invoice over :data:`MAX_ORDER_LINES` lines in parts
    (``573585``, ``573585-2``, ...)."""
    events: list[OrderPlaced | OrderCancelled] = []
    for part, start in enumerate(range(0, len(invoice.lines), MAX_ORDER_LINES), start=1):
        lines = invoice.lines[start:start + MAX_ORDER_LINES]
        number = invoice.number if part == 1 else f"{invoice.number}-{part}"
        if invoice.cancelled:
            events.append(OrderCancelled(
                event_id=f"or-c-{number}", occurred_at=invoice.last, user_id=invoice.user_id,
                session_id=invoice.number, source=SOURCE,
                payload=Cancellation(order_id=number, lines=lines)))
        else:
            events.append(OrderPlaced(
                event_id=f"or-o-{number}", occurred_at=invoice.last, user_id=invoice.user_id,
                session_id=invoice.number, source=SOURCE,
                payload=Order(order_id=number, lines=lines)))
    return events


class TimeOrder:
    """Holds events until none earlier can still come, then gives them in time order.

    Ties keep push order, so an item's catalog entry stays before its first order.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, AnyEvent]] = []
        self._pushed = 0

    def push(self, event: AnyEvent) -> None:
        heapq.heappush(self._heap, (event.ts, self._pushed, event))
        self._pushed += 1

    def pop_before(self, ts: float) -> Iterator[AnyEvent]:
        while self._heap and self._heap[0][0] < ts:
            yield heapq.heappop(self._heap)[2]


class InvoiceGrouper:
    """Valid lines in, events out: catalog entries, then whole invoices once closed."""

    def __init__(self) -> None:
        self.pending = TimeOrder()
        self.open: dict[str, OpenInvoice] = {}
        self.closed: set[str] = set()
        self.catalogued: set[str] = set()
        self.horizon = -math.inf
        self.split_orders = 0

    def is_closed(self, invoice: str) -> bool:
        return invoice in self.closed

    def add(self, line: InvoiceLine) -> Iterator[AnyEvent]:
        """Take ``line``; give the events now certain to come before anything later."""
        if line.line.item_id not in self.catalogued:
            self.catalogued.add(line.line.item_id)
            self.pending.push(catalog_event(line))
        invoice = self.open.get(line.invoice)
        if invoice is None:
            invoice = self.open[line.invoice] = OpenInvoice(
                line.invoice, line.cancelled, line.user_id, line.when)
        invoice.add(line)
        return self.advance(line.ts - GRACE_S)

    def advance(self, horizon: float) -> Iterator[AnyEvent]:
        """Close the invoices quiet since before ``horizon``; release what precedes it."""
        if horizon > self.horizon:
            self.horizon = horizon
            for number in [n for n, inv in self.open.items() if inv.last.timestamp() < horizon]:
                self._close(number)
        return self.pending.pop_before(horizon)

    def _close(self, number: str) -> None:
        self.closed.add(number)
        events = invoice_events(self.open.pop(number))
        self.split_orders += len(events) > 1
        for event in events:
            self.pending.push(event)


def events_from_rows(rows: Iterable[list[str]], stats: ReplayStats) -> Iterator[AnyEvent]:
    """Data rows (no header) → events in time order, counting into ``stats``."""
    grouper = InvoiceGrouper()
    for row in rows:
        stats.rows_read += 1
        line = parse_row(row)
        if isinstance(line, InvoiceLine) and grouper.is_closed(line.invoice):
            line = SKIP_LATE_LINE
        if isinstance(line, str):
            stats.skip(line)
            continue
        for event in grouper.add(line):
            yield stats.emitted(event)
        stats.split_orders = grouper.split_orders
    for event in grouper.advance(math.inf):
        yield stats.emitted(event)
    stats.split_orders = grouper.split_orders


def read_events(path: Path, stats: ReplayStats,
                limit_rows: int | None = None) -> Iterator[AnyEvent]:
    """The events of an Online Retail CSV (gzip or plain), first ``limit_rows`` rows only."""
    rows = csv_rows(path)
    header = [name.strip() for name in next(rows, [])]
    if header != list(COLUMNS):
        raise ValueError(f"{path}: not an Online Retail file; expected columns "
                         f"{', '.join(COLUMNS)}, found {', '.join(header) or 'nothing'}")
    yield from events_from_rows(islice(rows, limit_rows), stats)
