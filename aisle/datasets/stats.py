"""What a replay read, emitted and left out. Filled in while the events are consumed."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.events import AnyEvent, OrderPlaced, event_type


@dataclass
class ReplayStats:
    """Counters of one replay: rows in, events out by type, rows skipped by reason.

    >>> stats = ReplayStats("demo")
    >>> stats.rows_read = 3
    >>> stats.skip("no price: adjustment or free line")
    >>> stats.rows_skipped
    1
    """

    dataset: str
    rows_read: int = 0
    # event type tag ("order.placed", ...) -> events emitted
    events: dict[str, int] = field(default_factory=dict)
    # reason -> rows left out
    skipped: dict[str, int] = field(default_factory=dict)
    # Orders with no customer: they feed popularity and baskets only.
    guest_orders: int = 0
    # Source orders too long for one event (Order.lines has a maximum), sent in parts.
    split_orders: int = 0

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def events_emitted(self) -> int:
        return sum(self.events.values())

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def emitted(self, event: AnyEvent) -> AnyEvent:
        """Count ``event`` on its way out (returns it, for use inside a generator)."""
        kind = event_type(event)
        self.events[kind] = self.events.get(kind, 0) + 1
        if isinstance(event, OrderPlaced) and event.user_id is None:
            self.guest_orders += 1
        return event

    def summary(self) -> str:
        """A few lines for a console: rows, events by type, skips by reason."""
        lines = [f"{self.dataset}: {self.rows_read:,} rows read, "
                 f"{self.events_emitted:,} events, {self.rows_skipped:,} rows skipped, "
                 f"{self.guest_orders:,} guest orders"]
        lines += [f"  event   {kind}: {n:,}" for kind, n in sorted(self.events.items())]
        lines += [f"  skipped {reason}: {n:,}"
                  for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1])]
        if self.split_orders:
            lines.append(f"  {self.split_orders:,} orders sent in parts (too many lines)")
        return "\n".join(lines)
