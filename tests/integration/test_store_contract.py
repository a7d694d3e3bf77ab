"""One contract, two stores: store.lua on the real Valkey and the in-memory store must
leave identical state after the same batches (duplicates and redeliveries included)."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from streams import events as ev

pytestmark = pytest.mark.integration
T0 = datetime(2011, 1, 1, tzinfo=UTC)


def random_events(n: int, seed: int) -> list[ev.AnyEvent]:
    rng = random.Random(seed)
    out: list[ev.AnyEvent] = []
    for i in range(n):
        user, item, t = f"u{rng.randrange(30)}", f"i{rng.randrange(40)}", T0 + timedelta(minutes=i)
        common = {"event_id": f"e{i}", "occurred_at": t, "user_id": user,
                  "session_id": f"s{user}-{i // 50}", "source": rng.choice(["web", "app"])}
        k = rng.random()
        if k < 0.06:
            out.append(_crm_event(rng, i, common))
        elif k < 0.45:
            out.append(ev.ProductViewed(payload=ev.ItemRef(item_id=item, category="c" + item[-1]),
                                        **common))
        elif k < 0.55:
            out.append(ev.CartItemAdded(payload=ev.CartLine(item_id=item, quantity=2), **common))
        elif k < 0.6:
            out.append(ev.CartItemRemoved(payload=ev.ItemRef(item_id=item), **common))
        elif k < 0.75:
            lines = [ev.OrderLine(item_id=f"i{rng.randrange(40)}", quantity=rng.randrange(1, 5),
                                  unit_price=round(rng.random() * 9, 2))
                     for _ in range(rng.randrange(1, 6))]
            guest = rng.random() < 0.2
            out.append(ev.OrderPlaced(payload=ev.Order(order_id=f"o{i}", lines=lines),
                                      **{**common, "user_id": None if guest else user}))
        elif k < 0.78:
            out.append(ev.OrderCancelled(payload=ev.Cancellation(order_id=f"o{i - 5}"), **common))
        elif k < 0.82:
            out.append(ev.ReviewSubmitted(payload=ev.Review(item_id=item,
                                                            rating=rng.randrange(1, 6)), **common))
        elif k < 0.84:
            out.append(ev.PreferenceStated(payload=ev.Preference(dislikes=["material:polyester"]),
                                           **common))
        elif k < 0.86:
            out.append(ev.ComplaintFiled(payload=ev.Complaint(reason="itchy", item_id=item,
                                                              tags=["material:wool"]), **common))
        elif k < 0.93:
            out.append(ev.CatalogItemUpserted(
                payload=ev.CatalogItem(item_id=item, title="T " + item, price=rng.random() * 10,
                                       stock=rng.randrange(5), attributes={"colour": "red"}),
                **{**common, "user_id": None, "occurred_at": t - timedelta(days=rng.random())}))
        elif k < 0.99:
            out.append(ev.ProductFavorited(payload=ev.ItemRef(item_id=item), **common))
        else:
            out.append(ev.UserErased(**common))
    return out


def _crm_event(rng: random.Random, i: int, common: dict) -> ev.AnyEvent:
    offer = f"of{i % 7}"
    k = rng.random()
    if k < 0.3:
        return ev.OfferIssued(payload=ev.OfferIssue(
            offer_id=offer, rule_id="winback", policy_version="v1", kind="winback_coupon",
            discount_pct=10, items=["i1"], expires_at=common["occurred_at"] + timedelta(hours=24),
            reason="we miss you", trigger="dormant"), **common)
    if k < 0.5:
        return ev.OfferRedeemed(payload=ev.OfferRef(offer_id=offer), **common)
    if k < 0.6:
        return ev.OfferExpired(payload=ev.OfferRef(offer_id=offer), **common)
    if k < 0.8:
        lines = [ev.OrderLine(item_id="i1", quantity=1, unit_price=5.0)]
        return ev.OrderPlaced(payload=ev.Order(order_id=f"po{i}", lines=lines, offer_id=offer),
                              **common)
    if k < 0.85:
        return ev.LifecycleChanged(
            payload=ev.LifecycleChange(stage=rng.choice(["growing", "at_risk"])), **common)
    if k < 0.9:
        return ev.ConsentUpdated(payload=ev.Consent(push=rng.random() < 0.5,
                                                    timezone="Asia/Shanghai"), **common)
    # A push decision on the cart trigger: due as scheduled or earlier (the cart was
    # added again since: the trigger must stay), emitted or held.
    ts = common["occurred_at"].timestamp()
    outcome = rng.choice(["emitted", "held", "dropped"])
    return ev.PushDecided(payload=ev.PushDecision(
        trigger="cart_abandon|", due_ts=ts + rng.choice([-600.0, 0.0, 3600.0]), outcome=outcome,
        rule="cart_abandon", candidate_id=f"pc{i}", dedupe_key="cart_abandon:x",
        items=["i1", "i2"] if outcome == "emitted" else [],
        hold_until_ts=ts + 7200 if outcome == "held" else None), **common)


async def _run_both(redis_url: str, events: list[ev.AnyEvent],
                    settings: Settings | None = None) -> tuple[dict, dict]:
    settings = settings or Settings()
    keys = Keys(f"c{uuid.uuid4().hex[:6]}", 4)
    folder = Folder(keys, settings.features, settings.model)
    client = aioredis.Redis.from_url(redis_url)
    try:
        real, fake = RedisStore(client, keys, 86400.0), MemoryStore(keys, 86400.0)
        # Offsets as a log of three partitions gives them: each record the next of its
        # partition. (Before, the re-sent events took offsets a million ahead on one
        # partition, whose watermark then skipped every later chunk: only the first 250
        # events were ever compared.)
        ends = [0, 0, 0]

        def logged(n: int, event: ev.AnyEvent) -> tuple[str, int, ev.AnyEvent]:
            part = n % 3
            ends[part] += 1
            return f"t/{part}", ends[part] - 1, event

        previous: list[tuple[str, int, ev.AnyEvent]] = []
        for start in range(0, len(events), 250):
            # Each chunk also redelivers its first 20 events at new offsets (producer
            # retries: duplicates), its last 10 at their old offsets (a replay within
            # the call: duplicates too) and the previous chunk's last 10 at theirs (a
            # rebalance replay: below their partitions' watermarks).
            fresh = [logged(n, e) for n, e in enumerate(events[start:start + 250], start)]
            chunk = fresh + [logged(n, e) for n, (_, _, e) in enumerate(fresh[:20])]
            chunk += fresh[-10:] + previous[-10:]
            previous = fresh
            # Several sources per shard, each checked against its own watermark.
            batches: dict[tuple[int, str], list] = {}
            for source, off, event in chunk:
                batches.setdefault((folder.shard(event), source), []).append(
                    (event.event_id, off, event.ts, folder.fold(event)))
            got = await real.apply_many([(s, src, b) for (s, src), b in batches.items()])
            want = [0, 0, 0]
            for (shard, source), batch in batches.items():
                want = [a + b for a, b in zip(want, fake.apply(shard, source, batch), strict=True)]
            assert list(got) == want
            # Every new event applied (a retry may be applied again once the dedupe
            # window has passed its time: the catalog events' times are not the log's);
            # the previous chunk's replays skipped by their partitions' watermarks.
            applied, dups, old = want
            assert applied >= len({e.event_id for _, _, e in fresh})
            assert (applied + dups, old) == (len(chunk) - old, 10 if start else 0)
        # Derived keys too: the catalog change feed's numbering must agree as well (the
        # same batches in the same order here; a rebuild's order may differ).
        return await real.dump(include_derived=True), fake.dump(include_derived=True)
    finally:
        await client.aclose()


def differences(real: Any, fake: Any, path: str = "") -> list[str]:
    """Where two canonical dumps differ; numbers one unit apart in their ninth
    significant digit are the same. The canonical form rounds to 9 significant digits,
    and Valkey's long-double HINCRBYFLOAT sums and Python's doubles can fall either side
    of a rounding boundary (127655.675 against 127655.676 for one experiment's revenue
    sum of squares): that is representation, not state."""
    if isinstance(real, dict) and isinstance(fake, dict):
        out = [f"{path}/{k}: only in {'real' if k in real else 'fake'}"
               for k in sorted(set(real) ^ set(fake))]
        for k in sorted(set(real) & set(fake)):
            out += differences(real[k], fake[k], f"{path}/{k}")
        return out
    if isinstance(real, list) and isinstance(fake, list) and len(real) == len(fake):
        return [d for n, (a, b) in enumerate(zip(real, fake, strict=True))
                for d in differences(a, b, f"{path}[{n}]")]
    if isinstance(real, float) and isinstance(fake, float) and \
            math.isclose(real, fake, rel_tol=2e-8, abs_tol=1e-12):
        return []
    return [] if real == fake else [f"{path}: {real!r} != {fake!r}"]


def test_differences_tolerate_rounding_only() -> None:
    assert differences({"k": {"r2": 127655.675, "n": [1.0]}},
                       {"k": {"r2": 127655.676, "n": [1.0]}}) == []
    assert differences({"k": {"r2": 127655.675}}, {"k": {"r2": 127655.775}}) == [
        "/k/r2: 127655.675 != 127655.775"]
    assert differences({"a": 1.0, "b": "x"}, {"a": 1.0, "c": "x"}) == [
        "/b: only in real", "/c: only in fake"]


@pytest.mark.parametrize("seed", [1, 2])
def test_lua_and_memory_store_agree(redis_url: str, seed: int) -> None:
    real, fake = asyncio.run(_run_both(redis_url, random_events(2500, seed)))
    assert len(real) > 100
    assert differences(real, fake) == []


def test_sampled_pairs_of_big_baskets_agree(redis_url: str) -> None:
    """Baskets past ``basket_items_max`` pair their later lines with seeded samples
    drawn inside the script (opcode ``basketk``): the same draws and state in both
    stores, redeliveries included."""
    rng = random.Random(5)
    events: list[ev.AnyEvent] = []
    for i in range(120):
        lines = [ev.OrderLine(item_id=f"i{j}", quantity=1, unit_price=1.0)
                 for j in rng.sample(range(300), rng.choice([3, 40, 120]))]
        events.append(ev.OrderPlaced(event_id=f"b{i}", occurred_at=T0 + timedelta(minutes=i),
                                     user_id=f"u{i % 7}" if i % 3 else None,
                                     payload=ev.Order(order_id=f"o{i}", lines=lines)))
    sampled = Settings(features={"basket_sample_k": 10})
    folder = Folder(Keys("x", 4), sampled.features, sampled.model)
    assert any(op[0] == "basketk" for e in events for op in folder.fold(e))
    real, fake = asyncio.run(_run_both(redis_url, events, sampled))
    assert sum(1 for k in real if ":co:buy:" in k) > 250
    assert differences(real, fake) == []


def test_bounded_sets_keep_the_n_highest_scores_ever_given(redis_url: str) -> None:
    """``zmaxn`` trims only when a member is new (an update cannot grow the set), and
    ``session`` the same way: out-of-order scores, re-adds of trimmed members and repeats
    included, both stores still hold exactly the n highest of every member's best score,
    as trimming after every write would. ``hspan`` keeps the smallest and largest value."""
    rng = random.Random(11)
    keys = Keys(f"z{uuid.uuid4().hex[:6]}", 1)
    recent, sitems, sess, span = (keys.user("u", s) for s in ("views", "sitems", "sess", "rfm"))
    best: dict[str, float] = {}
    values: list[float] = []
    batch = []
    for i in range(400):
        member, score = f"m{rng.randrange(25)}", float(rng.randrange(1000))
        best[member] = max(best.get(member, -1.0), score)
        values.append(score)
        batch.append((f"e{i}", i, float(i), [
            ["zmaxn", recent, member, score, 5],
            ["session", sess, sitems, "s1", member, score, 4, keys.co_prefix("view", 0)],
            ["hspan", span, "first", "last", score]]))

    async def both() -> tuple[dict, dict]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            real, fake = RedisStore(client, keys, 1e9), MemoryStore(keys, 1e9)
            for start in range(0, len(batch), 50):  # several calls, as batches arrive
                part = batch[start:start + 50]
                assert list(await real.apply_many([(0, "t/0", part)])) == \
                    list(fake.apply(0, "t/0", part))
            return await real.dump(), fake.dump()
        finally:
            await client.aclose()

    real, fake = asyncio.run(both())
    assert differences(real, fake) == []
    ranked = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))
    assert real[recent] == dict(ranked[-5:]) and real[sitems] == dict(ranked[-4:])
    assert real[span] == {"first": min(values), "last": max(values)}
