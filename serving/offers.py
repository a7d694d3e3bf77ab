"""Limited-time offers: which offer a customer sees now, and when a new one is issued.

The policy is data (``aisle/offers.v1.toml``, read by :func:`load_policy`); this module is
the pure logic that applies it. :func:`decide` takes a customer's profile, the log's clock,
the offers the customer already holds and the items the caller gathered, and answers with
the offers to show plus at most one new offer the caller must record as an
``offer.issued`` event (:func:`issued_event`). No I/O here beyond reading the policy file.

Why the answer is safe to compute on every page view, on any API replica:

* A live offer (not expired, not redeemed) is shown again as it is, so reloading a page
  never mints another coupon.
* A new offer's id is a hash of (customer, rule, policy version, validity period), and
  the event id is derived from it. Two replicas deciding at the same moment issue the same
  offer, and the store's event-id dedupe keeps one.
* Budgets and caps are checked against what the caller read from the store. Two replicas
  racing on the last unit of a budget may both issue; budgets are soft by a few offers.

Times are Unix seconds of event time; ``clock`` is "now" on the log's clock.
"""

from __future__ import annotations

import hashlib
import math
import string
import tomllib
from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from models.customer_types import CustomerProfile
from streams import events as ev

DEFAULT_POLICY: Final = "offers.v1.toml"  # inside the aisle package
DAY_S: Final = 86400.0
HOUR_S: Final = 3600.0
# A single item may overshoot the tier gap by this share of the gap and still be preferred
# to a pair: "one more bottle gets you there" is an easier ask than two items.
SINGLE_ITEM_OVERSHOOT: Final = 0.25

Kind = Literal["winback_coupon", "first_order_discount", "replenishment_reminder",
               "tier_nudge", "early_access"]
Strategy = Literal["favorites_or_bought", "replenishment", "gap_closers", "bestsellers",
                   "new_arrivals"]
Trigger = Literal["replenishment_due", "tier_gap"]
Name = Annotated[str, Meta(min_length=1, max_length=40)]

# Placeholders a reason may use; the tier ones exist only when a tier gap triggered.
PLACEHOLDERS: Final = frozenset({"discount_pct", "hours", "count", "currency"})
TIER_PLACEHOLDERS: Final = frozenset({"gap", "tier", "next_tier"})


class PolicyError(ValueError):
    """The policy file is not valid. The message names the file and the bad field."""


# ---------------------------------------------------------------- the policy, as data

class When(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Who a rule is for. Every key given must match; an empty list matches anyone."""

    segment: tuple[Name, ...] = ()
    lifecycle: tuple[Name, ...] = ()
    trigger: Trigger | None = None
    max_gap: Annotated[float, Meta(gt=0)] | None = None


class Rule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    priority: int
    kind: Kind
    discount_pct: Annotated[float, Meta(ge=0, le=100)]
    valid_hours: Annotated[int, Meta(ge=1, le=24 * 90)]
    items: Strategy
    max_items: Annotated[int, Meta(ge=1, le=50)]  # the offer.issued event holds 50 at most
    reason: Annotated[str, Meta(min_length=1, max_length=500)]
    cap_days: Annotated[float, Meta(ge=0, le=3650)]
    when: When = msgspec.field(default_factory=When)


class OfferPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    version: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    budgets: dict[Kind, Annotated[int, Meta(ge=0)]]
    rules: tuple[Rule, ...] = ()

    @property
    def by_priority(self) -> list[Rule]:
        return sorted(self.rules, key=lambda r: -r.priority)


def load_policy(path: Path | None = None, *, segments: Collection[str] | None = None,
                lifecycles: Collection[str] | None = None) -> OfferPolicy:
    """Read and validate a policy file (the packaged ``aisle/offers.v1.toml`` by default).

    Pass the segment and lifecycle names the customer model assigns to also reject rules
    that name one it never assigns (a typo would otherwise silently match no one).
    Raises :class:`PolicyError` naming the file and the bad field.
    """
    if path is None:
        text = files("aisle").joinpath(DEFAULT_POLICY).read_text(encoding="utf-8")
        source = f"aisle/{DEFAULT_POLICY}"
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    return parse_policy(text, source, segments=segments, lifecycles=lifecycles)


def parse_policy(text: str, source: str = "<policy>", *,
                 segments: Collection[str] | None = None,
                 lifecycles: Collection[str] | None = None) -> OfferPolicy:
    """Validate policy TOML text; see :func:`load_policy`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    try:
        policy = msgspec.convert(raw, OfferPolicy)
    except msgspec.ValidationError as exc:
        raise PolicyError(f"{source}: {exc}") from None
    problems = _problems(policy, segments, lifecycles)
    if problems:
        raise PolicyError(f"{source}: " + "; ".join(problems))
    return policy


def _problems(policy: OfferPolicy, segments: Collection[str] | None,
              lifecycles: Collection[str] | None) -> list[str]:
    """What msgspec's types cannot say: relations between fields and between rules."""
    problems: list[str] = []
    first_id: dict[str, int] = {}
    first_priority: dict[int, int] = {}
    for i, rule in enumerate(policy.rules):
        at = f"$.rules[{i}]"
        if (j := first_id.setdefault(rule.id, i)) != i:
            problems.append(f"id {rule.id!r} is also $.rules[{j}].id - at `{at}.id`")
        if (j := first_priority.setdefault(rule.priority, i)) != i:
            problems.append(f"priority {rule.priority} is also $.rules[{j}].priority; "
                            f"make the order explicit - at `{at}.priority`")
        if rule.kind not in policy.budgets:
            problems.append(f"no daily budget for kind {rule.kind!r} used by "
                            f"{at} ({rule.id!r}) - at `$.budgets`")
        problems += [f"{p} - at `{at}{field}`" for field, p in _rule_problems(rule)]
        for field, names, known in (("segment", rule.when.segment, segments),
                                    ("lifecycle", rule.when.lifecycle, lifecycles)):
            unknown = sorted(set(names) - set(known)) if known is not None else []
            if unknown:
                problems.append(f"unknown {field} {unknown}; known: {sorted(known or ())}"
                                f" - at `{at}.when.{field}`")
    return problems


def _rule_problems(rule: Rule) -> Iterable[tuple[str, str]]:
    tier = rule.when.trigger == "tier_gap"
    if tier and rule.when.max_gap is None:
        yield ".when.max_gap", 'required when trigger = "tier_gap"'
    if not tier and rule.when.max_gap is not None:
        yield ".when.max_gap", 'only meaningful with trigger = "tier_gap"'
    if rule.items == "gap_closers" and not tier:
        yield ".items", '"gap_closers" needs when.trigger = "tier_gap"'
    if rule.kind == "early_access" and rule.discount_pct != 0:
        yield ".discount_pct", f"early_access carries no discount, got {rule.discount_pct:g}"
    allowed = PLACEHOLDERS | TIER_PLACEHOLDERS if tier else PLACEHOLDERS
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in
                  string.Formatter().parse(rule.reason) if name is not None]
    except ValueError as exc:
        yield ".reason", f"bad braces ({exc}); write {{{{ and }}}} for a literal brace"
        return
    for name, spec, conv in fields:
        if name not in allowed:
            yield ".reason", (f"unknown placeholder {{{name}}}; allowed here: "
                              f"{', '.join(sorted(allowed))}")
        elif spec or conv:
            yield ".reason", f"placeholder {{{name}}} takes no format, write just {{{name}}}"


def remaining_budget(policy: OfferPolicy, issued_today: Mapping[str, int]) -> dict[str, int]:
    """Budget left per kind, given how many offers of each kind were issued today.

    >>> p = parse_policy('version = "v"\\n[budgets]\\ntier_nudge = 3\\nearly_access = 1')
    >>> remaining_budget(p, {"tier_nudge": 1, "early_access": 5})
    {'tier_nudge': 2, 'early_access': 0}
    """
    return {kind: max(0, n - issued_today.get(kind, 0)) for kind, n in policy.budgets.items()}


# ---------------------------------------------------------------- offers

@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    user_id: str
    rule_id: str
    policy_version: str
    kind: str
    discount_pct: float
    items: tuple[str, ...]
    issued_at: float
    expires_at: float
    reason: str
    trigger: str          # what matched, e.g. "segment:dormant" or "tier_gap"


def seconds_left(offer: Offer, clock: float) -> float:
    """Seconds until ``offer`` expires (0 once it has)."""
    return max(0.0, offer.expires_at - clock)


def is_active(offer: Offer, clock: float, redeemed_ids: Collection[str]) -> bool:
    """Not expired and not redeemed. Put ids with any terminal state (an explicit
    ``offer.expired`` too) in ``redeemed_ids``."""
    return clock < offer.expires_at and offer.offer_id not in redeemed_ids


def make_offer_id(user_id: str, rule_id: str, policy_version: str, clock: float,
                  valid_hours: int) -> str:
    """Same customer, rule, policy and validity period → same id, on every replica.

    >>> a = make_offer_id("u1", "winback", "offers-v1", 86400.0, 24)
    >>> a == make_offer_id("u1", "winback", "offers-v1", 86400.0 + 3600, 24), len(a)
    (True, 16)
    >>> a == make_offer_id("u1", "winback", "offers-v1", 2 * 86400.0, 24)
    False
    """
    period = math.floor(clock / (valid_hours * HOUR_S))
    key = "\x1f".join((user_id, rule_id, policy_version, str(period)))
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class OfferCandidates:
    """Items an offer may contain, gathered by the caller from the store.

    The caller has already filtered every list: items in stock, not removed from the
    catalog, and none the customer's stated dislikes rule out (materials, brands,
    categories). The policy never sees an item it must not offer, so an offer built from
    these lists is fit to show. Lists are in the caller's order of preference (favourites
    newest first, replenishments soonest run-out first); the policy takes from the front.
    """

    currency: str
    favorites: Sequence[str] = ()
    bought: Sequence[str] = ()
    replenishment: Sequence[str] = ()
    priced_items: Sequence[tuple[str, float]] = ()  # to close a tier gap
    bestsellers: Sequence[str] = ()
    new_arrivals: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    show: list[Offer]         # the offers to answer with
    issue: Offer | None       # new: the caller records it as an offer.issued event


def decide(profile: CustomerProfile, clock: float, policy: OfferPolicy,
           active: Sequence[Offer], recent: Sequence[Offer], candidates: OfferCandidates,
           budget_left: Mapping[str, int]) -> Decision:
    """The offers to show ``profile``'s customer at ``clock``, and any new one to issue.

    ``active``: the customer's unredeemed offers (expired ones are dropped here).
    ``recent``: every offer issued to the customer within the longest ``cap_days``,
    redeemed or not; it enforces the caps. ``budget_left``: offers each kind may still
    issue today (:func:`remaining_budget`); a kind missing from it has none.
    """
    live = live_offers(profile.user_id, clock, active)
    if live:
        return Decision(live, None)
    history = [*active, *recent]
    for rule in policy.by_priority:
        if (not _matches(rule.when, profile) or budget_left.get(rule.kind, 0) <= 0
                or _capped(rule, history, clock)):
            continue
        items = _items(rule, profile, candidates)
        if not items:
            continue
        offer = _build(rule, policy.version, profile, clock, items, candidates.currency)
        # Issued and redeemed within this same period (cap_days = 0): never again.
        if any(o.offer_id == offer.offer_id for o in history):
            continue
        return Decision([offer], offer)
    return Decision([], None)


def live_offers(user_id: str, clock: float, active: Sequence[Offer]) -> list[Offer]:
    """The customer's live offers, soonest to expire first: while there are any,
    :func:`decide` shows them and issues nothing, whatever the candidates (or profile)."""
    live = [o for o in active if o.user_id == user_id and o.expires_at > clock]
    return sorted(live, key=lambda o: (o.expires_at, o.offer_id))


def wanted_sources(policy: OfferPolicy, profile: CustomerProfile) -> dict[Strategy, int]:
    """The item lists :func:`decide` could take for ``profile`` (the strategies of the
    rules whose ``when`` matches), each with the most items a rule takes from it. A
    caller gathers only these: the rest cannot change the decision (budgets and caps
    only rule out more). Empty: no rule can issue anything to this customer."""
    wanted: dict[Strategy, int] = {}
    for rule in policy.rules:
        if _matches(rule.when, profile):
            wanted[rule.items] = max(wanted.get(rule.items, 0), rule.max_items)
    return wanted


def _matches(when: When, profile: CustomerProfile) -> bool:
    if when.segment and profile.segment not in when.segment:
        return False
    if when.lifecycle and profile.lifecycle not in when.lifecycle:
        return False
    if when.trigger == "replenishment_due":
        return bool(profile.replenishments_due)
    if when.trigger == "tier_gap":
        gap, limit = profile.tier.gap, when.max_gap
        return (profile.tier.next_tier is not None and gap is not None and limit is not None
                and 0 < gap <= limit)
    return True


def _capped(rule: Rule, history: Sequence[Offer], clock: float) -> bool:
    window = rule.cap_days * DAY_S
    return any(o.rule_id == rule.id and clock - o.issued_at < window for o in history)


def _items(rule: Rule, profile: CustomerProfile, c: OfferCandidates) -> tuple[str, ...]:
    match rule.items:
        case "favorites_or_bought":
            source: Sequence[str] = c.favorites or c.bought
        case "replenishment":
            source = c.replenishment
        case "gap_closers":
            gap = profile.tier.gap
            source = gap_closers(c.priced_items, gap, rule.max_items) if gap else []
        case "bestsellers":
            source = c.bestsellers
        case "new_arrivals":
            source = c.new_arrivals
    return tuple(dict.fromkeys(source))[:rule.max_items]


def _build(rule: Rule, version: str, profile: CustomerProfile, clock: float,
           items: tuple[str, ...], currency: str) -> Offer:
    return Offer(
        offer_id=make_offer_id(profile.user_id, rule.id, version, clock, rule.valid_hours),
        user_id=profile.user_id, rule_id=rule.id, policy_version=version, kind=rule.kind,
        discount_pct=rule.discount_pct, items=items, issued_at=clock,
        expires_at=clock + rule.valid_hours * HOUR_S,
        reason=rule.reason.format_map(_reason_values(rule, profile, items, currency)),
        trigger=_trigger_label(rule.when, profile))


def _reason_values(rule: Rule, profile: CustomerProfile, items: tuple[str, ...],
                   currency: str) -> dict[str, str]:
    values = {"discount_pct": f"{rule.discount_pct:g}", "hours": str(rule.valid_hours),
              "count": str(len(items)), "currency": currency}
    if rule.when.trigger == "tier_gap":
        tier = profile.tier
        values |= {"gap": _money(tier.gap or 0.0), "tier": _capital(tier.tier or "none"),
                   "next_tier": _capital(tier.next_tier or "")}
    return values


def _money(amount: float) -> str:
    """Rounded up to the cent, so spending the amount shown always reaches the tier.

    >>> _money(40.0), _money(12.341), _money(9.999)
    ('40', '12.35', '10')
    """
    cents = math.ceil(round(amount * 100, 6))
    return str(cents // 100) if cents % 100 == 0 else f"{cents / 100:.2f}"


def _capital(name: str) -> str:
    """Tier names are configuration ("silver"); the sentence wants "Silver", and "VIP"
    must stay "VIP", so only the first letter changes."""
    return name[:1].upper() + name[1:]


def _trigger_label(when: When, profile: CustomerProfile) -> str:
    parts = []
    if when.segment:
        parts.append(f"segment:{profile.segment}")
    if when.lifecycle:
        parts.append(f"lifecycle:{profile.lifecycle}")
    if when.trigger:
        parts.append(when.trigger)
    return "+".join(parts) or "any"


# ---------------------------------------------------------------- tier gap

def gap_closers(priced_items: Sequence[tuple[str, float]], gap: float,
                max_items: int) -> list[str]:
    """The items to add (all of them) to spend at least ``gap``, overshooting least.

    1. The cheapest single item priced ≥ gap, if it overshoots by at most
       ``SINGLE_ITEM_OVERSHOOT`` of the gap: one item is the easiest ask.
    2. Otherwise the better of that single item and the pair with the smallest total
       ≥ gap (two pointers over the sorted prices: O(n log n), exact); a tie goes to the
       single item.
    3. If neither exists, the dearest items down until the gap is closed, within
       ``max_items``: enough, not the least overshoot (a basket of three or more is a
       weak nudge anyway).
    No basket within ``max_items`` reaches the gap → ``[]``. Equal prices keep the
    caller's order; non-positive prices and repeated ids are ignored.

    >>> items = [("socks", 12.0), ("scarf", 45.0), ("mug", 30.0), ("cap", 25.0)]
    >>> gap_closers(items, 40.0, 2)       # 45 is within 25% of 40
    ['scarf']
    >>> gap_closers(items, 35.0, 2)       # 45 overshoots by 10; socks + cap by 2
    ['socks', 'cap']
    >>> gap_closers(items, 14.0, 2)       # cap overshoots by 11; the best pair by 23
    ['cap']
    >>> gap_closers(items, 52.0, 2)       # nothing alone; cap + mug = 55
    ['cap', 'mug']
    >>> gap_closers(items, 100.0, 3), gap_closers(items, 100.0, 2)
    (['scarf', 'mug', 'cap'], [])
    """
    if not gap > 0 or max_items < 1:
        return []
    unique: dict[str, float] = {}
    for item, price in priced_items:
        if price > 0 and math.isfinite(price):
            unique.setdefault(item, price)
    ranked = sorted(unique.items(), key=lambda ip: ip[1])
    prices = [p for _, p in ranked]
    at = bisect_left(prices, gap)
    single = ranked[at] if at < len(ranked) else None
    if single is not None and single[1] <= gap * (1 + SINGLE_ITEM_OVERSHOOT):
        return [single[0]]
    pair = _best_pair(prices, gap) if max_items >= 2 else None
    if pair is not None and (single is None or prices[pair[0]] + prices[pair[1]] < single[1]):
        return [ranked[pair[0]][0], ranked[pair[1]][0]]
    if single is not None:
        return [single[0]]
    return _dearest_until(ranked, gap, max_items)


def _best_pair(prices: Sequence[float], gap: float) -> tuple[int, int] | None:
    """Indices of two ascending ``prices`` with the smallest sum ≥ gap."""
    best: tuple[int, int] | None = None
    lo, hi = 0, len(prices) - 1
    while lo < hi:
        total = prices[lo] + prices[hi]
        if total >= gap:
            if best is None or total < prices[best[0]] + prices[best[1]]:
                best = (lo, hi)
            hi -= 1
        else:
            lo += 1
    return best


def _dearest_until(ranked: Sequence[tuple[str, float]], gap: float,
                   max_items: int) -> list[str]:
    picked, total = [], 0.0
    for item, price in reversed(ranked[-max_items:]):
        picked.append(item)
        total += price
        if total >= gap:
            return picked
    return []


# ---------------------------------------------------------------- events and the store

def issued_event(offer: Offer, source: str = "aisle.offers") -> ev.OfferIssued:
    """The ``offer.issued`` event recording ``offer``. Its event id derives from the offer
    id, so the same offer issued by two replicas is applied once."""
    return ev.OfferIssued(
        event_id=f"offer.issued:{offer.offer_id}",
        occurred_at=datetime.fromtimestamp(offer.issued_at, UTC),
        user_id=offer.user_id, source=source,
        payload=ev.OfferIssue(
            offer_id=offer.offer_id, rule_id=offer.rule_id,
            policy_version=offer.policy_version, kind=offer.kind,
            discount_pct=offer.discount_pct, items=list(offer.items),
            expires_at=datetime.fromtimestamp(offer.expires_at, UTC), reason=offer.reason,
            trigger=offer.trigger))


def offer_from_doc(user_id: str, doc: Mapping[str, Any]) -> Offer:
    """An offer as the feature store keeps it (one JSON document per offer id)."""
    return Offer(offer_id=doc["offer_id"], user_id=user_id, rule_id=doc["rule_id"],
                 policy_version=doc["policy_version"], kind=doc["kind"],
                 discount_pct=float(doc["discount_pct"]), items=tuple(doc["items"]),
                 issued_at=float(doc["issued_at"]), expires_at=float(doc["expires_ts"]),
                 reason=doc["reason"], trigger=doc["trigger"])
