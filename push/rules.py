"""Who gets which push, now, later or never: pure rules, no I/O.

The drain (``push/drain.py``) reads one customer's state, turns each due trigger into a
:class:`Draft` (what it would send, or why its content is moot: bought, used, emptied),
and :func:`decide` applies consent, expiry, dedupe, frequency caps and quiet hours, the
highest priority first, so when several compete the most important one takes the slot.
Times are Unix seconds on the log's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aisle.settings import PushSettings
from push.candidate import CandidateItem, CandidateOffer, Reason

DAY_S: Final = 86400.0
WEEK_S: Final = 7 * DAY_S
# Priority of each reason: a coupon that is about to lapse beats a reminder.
PRIORITY: Final[dict[str, int]] = {"offer_expiring": 80, "cart_abandon": 70,
                                    "back_in_stock": 65, "price_drop": 60, "replenish": 55,
                                    "winback": 50, "tier_nudge": 45}
Outcome = Literal["emitted", "held", "dropped"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """A scheduled check: ``<user>|<reason>|<ref>`` in the shard's due zset."""

    user_id: str
    reason: str
    ref: str
    due_ts: float

    @classmethod
    def parse(cls, member: str, due_ts: float) -> Trigger:
        """
        >>> Trigger.parse("u1|offer_expiring|of-9", 5.0).key
        'offer_expiring|of-9'
        """
        user, reason, ref = (member.split("|", 2) + ["", ""])[:3]
        return cls(user, reason, ref, due_ts)

    @property
    def member(self) -> str:
        return f"{self.user_id}|{self.reason}|{self.ref}"

    @property
    def key(self) -> str:
        return f"{self.reason}|{self.ref}"


@dataclass(frozen=True, slots=True)
class Draft:
    """What a trigger would send; ``drop`` names the rule when its content is moot."""

    trigger: Trigger
    reason: Reason
    items: tuple[CandidateItem, ...] = ()
    offer: CandidateOffer | None = None
    expires_ts: float = 0.0
    dedupe_key: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    drop: str | None = None

    @property
    def priority(self) -> int:
        return PRIORITY.get(self.reason, 0)


@dataclass(frozen=True, slots=True)
class Fatigue:
    """One customer's push state, as read: consent, time zone, what was pushed."""

    known: bool  # any state at all: an erased (or never seen) customer gets nothing
    opted_in: bool
    timezone: str
    pushed: tuple[tuple[float, str], ...] = ()  # (ts, reason)
    dedupe: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verdict:
    draft: Draft
    outcome: Outcome
    rule: str  # emitted: the reason; held: quiet_hours; dropped: the rule
    hold_until: float | None = None


def decide(drafts: Sequence[Draft], fatigue: Fatigue, clock: float, s: PushSettings,
           ) -> list[Verdict]:
    """Verdicts for one customer's due drafts, highest priority first; each emitted one
    counts against the caps of the next."""
    pushed = list(fatigue.pushed)
    dedupe = dict(fatigue.dedupe)
    out: list[Verdict] = []
    for d in sorted(drafts, key=lambda d: (-d.priority, d.trigger.due_ts, d.trigger.member)):
        rule = _suppressed(d, fatigue, pushed, dedupe, clock, s)
        if rule is not None:
            out.append(Verdict(d, "dropped", rule))
            continue
        opens = quiet_until(clock, fatigue.timezone, s)
        if opens is not None:
            out.append(Verdict(d, "dropped", "quiet_hours_expired") if opens >= d.expires_ts
                       else Verdict(d, "held", "quiet_hours", opens))
            continue
        out.append(Verdict(d, "emitted", d.reason))
        pushed.append((clock, d.reason))
        dedupe[d.dedupe_key] = clock
    return out


def _suppressed(d: Draft, f: Fatigue, pushed: list[tuple[float, str]],
                dedupe: dict[str, float], clock: float, s: PushSettings) -> str | None:
    if not f.known:
        return "unknown_customer"
    if not f.opted_in:
        return "opted_out"
    if d.drop is not None:
        return d.drop
    if clock >= d.expires_ts:
        return "expired"
    last = dedupe.get(d.dedupe_key)
    if last is not None and clock - last < s.dedupe_window_s:
        return "duplicate"
    day = [r for ts, r in pushed if clock - ts < DAY_S]
    week = [r for ts, r in pushed if clock - ts < WEEK_S]
    if len(day) >= s.max_per_day:
        return "cap_day"
    if len(week) >= s.max_per_week:
        return "cap_week"
    if day.count(d.reason) >= s.max_per_reason_day:
        return "cap_reason_day"
    if week.count(d.reason) >= s.max_per_reason_week:
        return "cap_reason_week"
    return None


def zone(name: str | None, default: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or default)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return ZoneInfo(default)


def quiet_until(clock: float, tz: str, s: PushSettings) -> float | None:
    """When the customer's quiet hours end, if ``clock`` falls inside them; else None.

    >>> s = PushSettings(quiet_start_h=21, quiet_end_h=9)
    >>> t = datetime(2024, 5, 1, 22, 30, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
    >>> datetime.fromtimestamp(quiet_until(t, "Asia/Shanghai", s), ZoneInfo("Asia/Shanghai"))
    datetime.datetime(2024, 5, 2, 9, 0, tzinfo=zoneinfo.ZoneInfo(key='Asia/Shanghai'))
    >>> quiet_until(t, "Europe/London", s) is None  # 15:30 in London
    True
    """
    start, end = s.quiet_start_h, s.quiet_end_h
    if start == end:
        return None
    z = zone(tz, s.default_timezone)
    local = datetime.fromtimestamp(clock, z)
    h = local.hour
    quiet = (start <= h < end) if start < end else (h >= start or h < end)
    if not quiet:
        return None
    day = local.date() if h < end else local.date() + timedelta(days=1)
    return datetime.combine(day, dtime(end), tzinfo=z).timestamp()
