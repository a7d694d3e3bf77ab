"""The real data for the quality evaluation: events in time order, a time split, the truth.

A split is defined on *interaction* events (views, carts, favourites, order lines) by
event time: the test period is the last ``test_share`` of them, and everything before
its first timestamp (catalog, cancellations included) is the training log. The
validation split for tuning is the same rule applied to the training log alone, so
tuning never sees the test period.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aisle.datasets import open_dataset
from benchmarks.common import SHARED_DATA
from streams.events import (
    AnyEvent,
    CartItemAdded,
    OrderPlaced,
    ProductFavorited,
    ProductViewed,
)

DATASETS = {
    "online_retail": SHARED_DATA / "online_retail" / "online_retail.csv.gz",
    "taobao": SHARED_DATA / "taobao_userbehavior" / "userbehavior_sample.csv.gz",
}
TEST_SHARE = 0.15


def load(name: str) -> list[AnyEvent]:
    events, _ = open_dataset(DATASETS[name])
    return list(events)


def touched(event: AnyEvent) -> list[str]:
    """The items a customer interacted with in ``event`` (none for other events)."""
    if event.user_id is None:
        return []
    if isinstance(event, OrderPlaced):
        return list(dict.fromkeys(line.item_id for line in event.payload.lines))
    if isinstance(event, ProductViewed | CartItemAdded | ProductFavorited):
        return [event.payload.item_id]
    return []


@dataclass
class Split:
    """Training log, and per customer what they touched before and after the cut."""

    train: list[AnyEvent]
    cut_ts: float
    history: dict[str, set[str]] = field(default_factory=dict)
    future: dict[str, set[str]] = field(default_factory=dict)
    # Test-period baskets: one order (Online Retail), one session (Taobao).
    baskets: list[list[str]] = field(default_factory=list)
    train_baskets: list[list[str]] = field(default_factory=list)

    @property
    def catalog(self) -> set[str]:
        return {i for items in self.history.values() for i in items}

    def truth(self, new_only: bool) -> dict[str, set[str]]:
        """Test items of customers with a training history; ``new_only`` drops the items
        they had already touched."""
        out = {}
        for user, items in self.future.items():
            if user not in self.history:
                continue
            rel = items - self.history[user] if new_only else items
            if rel:
                out[user] = rel
        return out


def cut_at(events: list[AnyEvent], test_share: float) -> float:
    stamps = np.array([ev.ts for ev in events if touched(ev)])
    return float(np.quantile(stamps, 1.0 - test_share))


def split(events: list[AnyEvent], cut_ts: float, end_ts: float = np.inf) -> Split:
    """Train on ``ts < cut_ts``; test on interactions in ``[cut_ts, end_ts)``."""
    train = [ev for ev in events if ev.ts < cut_ts]
    out = Split(train, cut_ts)
    history: dict[str, set[str]] = defaultdict(set)
    future: dict[str, set[str]] = defaultdict(set)
    baskets: dict[tuple[str, str], list[str]] = {}
    train_baskets: dict[tuple[str, str], list[str]] = {}
    for ev in events:
        items = touched(ev)
        if not items or ev.ts >= end_ts:
            continue
        user = ev.user_id or ""
        test = ev.ts >= cut_ts
        (future if test else history)[user].update(items)
        # A basket is a session: an invoice in Online Retail, a visit on Taobao.
        key = (user, ev.session_id or ev.event_id)
        basket = (baskets if test else train_baskets).setdefault(key, [])
        basket.extend(i for i in items if i not in basket)
    out.history, out.future = dict(history), dict(future)
    out.baskets = [b for b in baskets.values() if len(b) > 1]
    out.train_baskets = [b for b in train_baskets.values() if len(b) > 1]
    return out


def order_baskets(events: Sequence[AnyEvent], start: float = -np.inf, end: float = np.inf,
                  ) -> list[tuple[list[str], bool]]:
    """Every order in ``[start, end)`` as the store's co-purchase fold sees it: its
    distinct items in line order, guests' orders included; with whether a guest placed
    it. (``Split.train_baskets`` holds registered customers' orders only.)"""
    out = []
    for ev in events:
        if isinstance(ev, OrderPlaced) and start <= ev.ts < end:
            items = list(dict.fromkeys(line.item_id for line in ev.payload.lines))
            if len(items) > 1:
                out.append((items, ev.user_id is None))
    return out


def test_split(events: list[AnyEvent], test_share: float = TEST_SHARE) -> Split:
    return split(events, cut_at(events, test_share))


def validation_split(events: list[AnyEvent], test_share: float = TEST_SHARE) -> Split:
    """The last ``test_share`` of the *training* period is the validation period."""
    test_cut = cut_at(events, test_share)
    before = [ev for ev in events if ev.ts < test_cut]
    return split(before, cut_at(before, test_share), end_ts=test_cut)


def data_path(name: str) -> Path:
    return DATASETS[name]
