"""Experiments: assignment (deterministic, sticky, close to the weights, layers), the
attribution opcodes through the memory store, and the statistics."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from scipy import stats

from aisle.settings import Settings
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.updates import Folder
from models import experiment_stats as xs
from models.assignment import BUCKETS, bucket, in_layer_range, variant_for, variant_ranges
from serving.experiments import Definition, assign_pure
from streams import events as ev

USERS = [f"c{n}" for n in range(20_000)]
T0 = datetime(2024, 3, 1, tzinfo=UTC)


# ---------------------------------------------------------------- assignment

def test_bucket_is_deterministic_and_in_range() -> None:
    assert bucket("exp-1", "17850") == 9114  # the same on every replica, every process
    assert all(0 <= bucket("s", u) < BUCKETS for u in USERS[:1000])
    assert bucket("s1", "u") != bucket("s2", "u") or bucket("s1", "v") != bucket("s2", "v")


def test_split_is_close_to_the_weights() -> None:
    weights = [("a", 5.0), ("b", 3.0), ("c", 2.0)]
    counts = {name: 0 for name, _ in weights}
    for u in USERS:
        counts[variant_for(weights, bucket("split", u))] += 1
    expected = [len(USERS) * w / 10 for _, w in weights]
    p = stats.chisquare(list(counts.values()), expected).pvalue
    assert p > 0.01, counts


def test_changing_weights_moves_only_the_changed_range() -> None:
    before = {u: variant_for([("a", 1), ("b", 1)], bucket("sticky", u)) for u in USERS}
    after = {u: variant_for([("a", 6), ("b", 4)], bucket("sticky", u)) for u in USERS}
    moved = [u for u in USERS if before[u] != after[u]]
    assert all(before[u] == "b" and after[u] == "a" for u in moved)
    assert all(5000 <= bucket("sticky", u) < 6000 for u in moved)
    assert 0.08 < len(moved) / len(USERS) < 0.12
    assert variant_ranges([("a", 6), ("b", 4)]) == [("a", 0, 6000), ("b", 6000, 10000)]


def _spec(xid: str, layer: str = "l", rng: tuple[int, int] = (0, BUCKETS),
          **kw: object) -> ev.ExperimentSpec:
    return ev.ExperimentSpec(id=xid, surfaces=["recommendations"], layer=layer,
                             layer_range=rng, variants=[ev.Variant(name="a", weight=1),
                                                        ev.Variant(name="b", weight=1)],
                             **kw)  # type: ignore[arg-type]


def test_layers_exclusive_within_independent_across() -> None:
    now = T0.timestamp()
    defs = [Definition(_spec("x1", rng=(0, 5000))), Definition(_spec("x2", rng=(5000, 10000))),
            Definition(_spec("y1", layer="other"))]
    both = in_x = 0
    for u in USERS[:4000]:
        got = {a.experiment for a in assign_pure(defs, u, "recommendations", now)}
        assert not {"x1", "x2"} <= got  # one layer: mutually exclusive
        assert len(got & {"x1", "x2"}) == 1 and "y1" in got
        in_x += "x1" in got
        both += "x1" in got and in_layer_range("other", u, 0, 5000)
    assert 0.45 < in_x / 4000 < 0.55
    assert 0.2 < both / 4000 < 0.3  # independent layers: 0.5 × 0.5


def test_status_schedule_and_targeting() -> None:
    now = T0.timestamp()
    later = _spec("later", starts_at=T0 + timedelta(days=1))
    targeted = _spec("vip", layer="t", segments=["high_value_loyal"])
    defs = [Definition(later), Definition(_spec("off"), stopped_at=now - 1), Definition(targeted)]
    assert defs[0].status(now) == "scheduled" and defs[1].status(now) == "stopped"
    assert assign_pure(defs, "u1", "recommendations", now, "dormant") == []
    got = assign_pure(defs, "u1", "recommendations", now, "high_value_loyal")
    assert [a.experiment for a in got] == ["vip"]
    assert assign_pure(defs, "u1", "offers", now, "high_value_loyal") == []


@pytest.mark.parametrize("bad, why", [
    ({"variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}, "unique"),
    ({"control": "z"}, "control"),
    ({"layer_range": [5000, 5000]}, "layer_range"),
    ({"variants": [{"name": "a", "weight": 1, "params": {"discount_scale": True}},
                   {"name": "b", "weight": 1}]}, "discount_scale"),
    ({"variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 1}]}, "weight"),
])
def test_invalid_definitions_are_refused(bad: dict, why: str) -> None:
    doc = {"type": "experiment.created", "event_id": "e", "occurred_at": "2024-01-01T00:00:00Z",
           "payload": {"id": "x", "surfaces": ["offers"],
                       "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}],
                       **bad}}
    import msgspec
    with pytest.raises(ev.DecodeError, match=why):
        ev.decode_event(msgspec.json.encode(doc))


# ---------------------------------------------------------------- attribution

class Sim:
    """Events through the real folds and the memory twin of store.lua."""

    def __init__(self) -> None:
        s = Settings()
        self.keys = Keys("t", 4)
        self.folder = Folder(self.keys, s.features, s.model)
        self.store = MemoryStore(self.keys, s.features.dedupe_window_s)
        self.offset = 0

    def apply(self, *events: ev.AnyEvent) -> None:
        for e in events:
            self.offset += 1
            self.store.apply(self.folder.shard(e), "t/0",
                             [(e.event_id, self.offset, e.ts, self.folder.fold(e))])

    def results(self, xid: str = "x") -> dict:
        per_day: xs.PerDay = {}
        for shard in range(4):
            h = self.store.data.get(self.keys.experiment_stats(shard, xid), {})
            xs.parse_fields(h.items(), per_day)
        doc = xs.results(xid, per_day, {"a": 1.0, "b": 1.0}, "a", "conversion", [])
        return {v["variant"]: v for v in doc["variants"]}


def expose(user: str, rid: str, variant: str, minutes: float) -> ev.ExperimentExposed:
    return ev.ExperimentExposed(
        event_id=f"x-{rid}-x", user_id=user, occurred_at=T0 + timedelta(minutes=minutes),
        payload=ev.Exposure(request_id=rid, experiment="x", variant=variant,
                            surface="recommendations", items=["i1"]))


def order(user: str, oid: str, amount: float, minutes: float) -> ev.OrderPlaced:
    return ev.OrderPlaced(event_id=f"o-{oid}", user_id=user,
                          occurred_at=T0 + timedelta(minutes=minutes),
                          payload=ev.Order(order_id=oid, lines=[
                              ev.OrderLine(item_id="i1", quantity=1, unit_price=amount)]))


def click(user: str, rid: str, n: int, minutes: float) -> ev.ProductViewed:
    return ev.ProductViewed(event_id=f"v-{rid}-{n}", user_id=user,
                            occurred_at=T0 + timedelta(minutes=minutes),
                            payload=ev.ItemRef(item_id="i1", request_id=rid))


def test_a_purchase_delivered_twice_counts_once() -> None:
    sim = Sim()
    sim.apply(expose("u1", "r1", "b", 0), order("u1", "o1", 20.0, 5), order("u1", "o1", 20.0, 5))
    b = sim.results()["b"]
    assert (b["users"], b["exposures"], b["orders"], b["revenue"], b["converted"]) == \
        (1, 1, 1, 20.0, 1)


def test_clicks_once_per_answer_and_only_for_known_requests() -> None:
    sim = Sim()
    sim.apply(expose("u1", "r1", "a", 0), expose("u1", "r2", "a", 1),
              click("u1", "r1", 1, 2), click("u1", "r1", 2, 3),  # two views of one answer
              click("u1", "zz", 1, 4), click("u2", "r2", 1, 4))  # unknown / someone else's
    a = sim.results()["a"]
    assert (a["exposures"], a["clicks"], a["ctr"]) == (2, 1, 0.5)


def test_attribution_window() -> None:
    sim = Sim()
    week = 7 * 24 * 60
    sim.apply(order("u1", "before", 5.0, -10), expose("u1", "r1", "a", 0),
              order("u1", "inside", 7.0, week - 1), order("u1", "after", 9.0, week + 1))
    a = sim.results()["a"]
    assert (a["orders"], a["revenue"]) == (1, 7.0)
    # The pre-exposure order is the customer's pre-period spend (CUPED covariate).
    xp = sim.store.data[sim.keys.user("u1", "xp")]
    assert float(xp["x|x"]) == 5.0


def test_first_exposure_fixes_the_variant() -> None:
    sim = Sim()
    sim.apply(expose("u1", "r1", "a", 0), expose("u1", "r2", "b", 1), order("u1", "o", 3.0, 2))
    res = sim.results()
    assert res["a"]["users"] == 1 and res["a"]["exposures"] == 2 and res["a"]["moved"] == 1
    assert res["b"]["users"] == 0 and res["a"]["orders"] == 1


def test_erasure_deletes_experiment_state() -> None:
    sim = Sim()
    sim.apply(expose("u1", "r1", "a", 0))
    assert sim.keys.user("u1", "xp") in sim.store.data
    sim.apply(ev.UserErased(event_id="er", user_id="u1", occurred_at=T0 + timedelta(hours=1)))
    assert not [k for k in sim.store.data if ":u:u1:" in k]
    assert sim.results()["a"]["users"] == 1  # aggregates stay


def test_streamed_metrics_equal_direct_computation() -> None:
    """The sums kept by the opcodes give the same means and variances as computing them
    from per-customer rows."""
    rng = random.Random(7)
    sim = Sim()
    rows = []
    for n in range(300):
        user, minutes = f"u{n}", n * 10
        e, c, revenue, orders = rng.randrange(1, 5), 0, 0.0, 0
        for k in range(e):
            sim.apply(expose(user, f"r{n}-{k}", "b", minutes + k))
            if rng.random() < 0.3:
                sim.apply(click(user, f"r{n}-{k}", 0, minutes + k))
                c += 1
        for k in range(rng.choice([0, 0, 1, 2])):
            amount = round(rng.uniform(1, 50), 2)
            sim.apply(order(user, f"o{n}-{k}", amount, minutes + 9))
            revenue += amount
            orders += 1
        rows.append((e, c, revenue, orders))
    e, c, r, o = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
    b = sim.results()["b"]
    assert b["ctr"] == pytest.approx(c.sum() / e.sum())
    assert b["revenue_per_user"] == pytest.approx(r.mean())
    assert b["aov"] == pytest.approx(r.sum() / o.sum())
    assert b["conversion"] == pytest.approx((o > 0).mean())
    lo, hi = b["ci95"]["revenue_per_user"]
    half = xs.Z95 * r.std(ddof=1) / np.sqrt(len(r))
    assert (lo, hi) == pytest.approx((r.mean() - half, r.mean() + half))


# ---------------------------------------------------------------- statistics

def _sums(values: np.ndarray) -> dict[str, float]:
    t = dict.fromkeys(xs.FIELDS, 0.0)
    t.update(users=len(values), rev=float(values.sum()), r2=float((values**2).sum()),
             conv=float((values > 0).sum()))
    return t


def test_lift_interval_covers_the_true_lift() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(200):
        control = rng.exponential(10.0, 2000) * (rng.random(2000) < 0.3)
        treat = rng.exponential(11.0, 2000) * (rng.random(2000) < 0.3)  # +10% revenue
        d = xs.lift(xs.metric(_sums(treat), "revenue_per_user"),
                    xs.metric(_sums(control), "revenue_per_user"))
        assert d is not None
        covered += d["ci95"][0] <= 0.10 <= d["ci95"][1]
    assert 0.9 <= covered / 200 <= 0.99


def test_srm_catches_a_broken_split() -> None:
    ok = xs.srm_check({"a": 5030, "b": 4970}, {"a": 1, "b": 1})
    assert ok["ok"] and ok["warning"] is None
    broken = xs.srm_check({"a": 5000, "b": 4600}, {"a": 1, "b": 1})
    assert not broken["ok"] and "SAMPLE RATIO MISMATCH" in broken["warning"]
    assert xs.srm_check({"a": 3, "b": 1}, {"a": 1, "b": 1})["warning"].startswith("too few")


def test_guardrail_violated_only_when_confidently_worse() -> None:
    rng = np.random.default_rng(5)
    control = rng.exponential(10.0, 5000)
    tot = {"a": _sums(control), "b": _sums(control * 0.7), "c": _sums(control * 0.99)}
    checks = {c["variant"]: c for c in xs.guardrail_checks(tot, "a",
                                                           [("revenue_per_user", 5.0)])}
    assert checks["b"]["status"] == "violated" and not checks["b"]["ok"]
    assert checks["c"]["status"] == "ok"


def test_cuped_keeps_the_mean_and_narrows_the_interval() -> None:
    rng = np.random.default_rng(11)
    tot = {}
    for name, lift in (("a", 1.0), ("b", 1.05)):
        x = rng.exponential(100.0, 4000)
        y = (0.5 * x + rng.normal(0, 10, 4000)) * lift
        t = dict.fromkeys(xs.FIELDS, 0.0)
        t.update(users=4000, rev=y.sum(), r2=(y**2).sum(), x=x.sum(), x2=(x**2).sum(),
                 rx=(x * y).sum())
        tot[name] = t
    cuped = xs.cuped_revenue(tot)
    plain = {v: xs.metric(tot[v], "revenue_per_user") for v in tot}
    assert cuped["b"].var < plain["b"].var / 4
    assert abs(cuped["b"].value - plain["b"].value) < 3 * plain["b"].var ** 0.5


def test_doctests() -> None:
    import doctest

    from models import assignment
    assert doctest.testmod(assignment).failed == 0


def test_experiment_keys_byte_for_byte() -> None:
    k = Keys("a", 8)
    shard = k.shard_of("aisle.experiments")
    assert k.experiment_defs("aisle.experiments") == f"{{a:{shard}}}:x:defs"
    assert k.experiment_times("aisle.experiments") == f"{{a:{shard}}}:x:times"
    assert k.experiment_stats(3, "blend") == "{a:3}:x:st:blend"
    assert k.user("17850", "xp") == "{a:1}:u:17850:xp"
    assert {"xp", "xreq", "xreql"} <= set(k.user_keys("u") and
                                          [s.rsplit(":", 1)[1] for s in k.user_keys("u")])


def test_variant_params_change_blend_and_offer_policy() -> None:
    from serving.crm import CustomerService
    from serving.experiments import Assignment, ExperimentRegistry
    from serving.service import RecommendationService

    registry = ExperimentRegistry(None, Keys("a", 8))  # type: ignore[arg-type]
    base = RecommendationService(Settings(), None, None)  # type: ignore[arg-type]
    same = registry.service_for(base, [Assignment("x", "a", "l", "recommendations")])
    assert same is base
    tuned = registry.service_for(base, [Assignment("x", "b", "l", "recommendations",
                                                   {"blend_als": 0.0, "blend_coview": 2.0})])
    assert (tuned.settings.serving.blend_als, tuned.settings.serving.blend_coview) == (0.0, 2.0)
    assert tuned.settings.serving.blend_copurchase == base.settings.serving.blend_copurchase
    assert registry.service_for(base, [Assignment("x", "b", "l", "recommendations",
                                                  {"blend_als": 0.0, "blend_coview": 2.0})]) \
        is tuned  # one service per parameter set, not per request

    crm = CustomerService(None, Keys("a", 8), None)  # type: ignore[arg-type]
    deeper = registry.customers_for(crm, [Assignment("x", "deep", "o", "offers",
                                                     {"discount_scale": 1.5})])
    pairs = zip(crm.policy.rules, deeper.policy.rules, strict=True)
    assert all(d.discount_pct == min(100.0, round(b.discount_pct * 1.5, 1)) for b, d in pairs)
    assert deeper.policy.version == f"{crm.policy.version}.x.deep"
    holdout = registry.customers_for(crm, [Assignment("y", "h", "o", "offers",
                                                      {"offers_off": True})])
    assert set(holdout.policy.budgets.values()) == {0}


def view(user: str, item: str, n: int, minutes: float) -> ev.ProductViewed:
    return ev.ProductViewed(event_id=f"w-{user}-{n}", user_id=user,
                            occurred_at=T0 + timedelta(minutes=minutes),
                            payload=ev.ItemRef(item_id=item))


def test_a_view_of_a_shown_item_soon_after_is_a_click() -> None:
    """Without the request id: the newest unclicked answer that showed the item within
    ``click_window_s`` (30 min) gets the click, once."""
    sim = Sim()
    sim.apply(expose("u1", "r1", "a", 0), view("u1", "i1", 1, 10), view("u1", "i1", 2, 11),
              view("u1", "i9", 3, 12))  # shown once: one click; i9 was never shown
    assert sim.results()["a"]["clicks"] == 1
    sim.apply(expose("u1", "r2", "a", 20), view("u1", "i1", 4, 51))  # 31 min later: no
    assert sim.results()["a"]["clicks"] == 1
    sim.apply(view("u1", "i1", 5, 49), click("u1", "r2", 9, 50))  # in the window; then the
    res = sim.results()["a"]  # explicit click on the same answer does not count again
    assert (res["clicks"], res["exposures"]) == (2, 2)


class _SlowDefinitions:
    """A store stand-in for the registry's one read: counts reads, each takes 20 ms and
    answers the experiments stored at the time it was asked."""

    def __init__(self) -> None:
        self.stored: dict[bytes, bytes] = {}
        self.reads = 0

    def pipeline(self, transaction: bool = False) -> _SlowDefinitions:
        return self

    def hgetall(self, key: str) -> None:
        pass

    async def execute(self) -> list[dict[bytes, bytes]]:
        self.reads += 1
        answer = dict(self.stored)
        await asyncio.sleep(0.02)
        return [answer, {}]


def test_stale_definitions_are_refreshed_by_one_read_while_requests_go_on() -> None:
    from serving.experiments import ExperimentRegistry

    store = _SlowDefinitions()
    registry = ExperimentRegistry(store, Keys("a", 8), ttl_s=0.05)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await registry.definitions() == {}  # nothing known: the first call waits
        assert store.reads == 1
        store.stored[b"x1"] = msgspec.json.encode(_spec("x1"))
        await asyncio.sleep(0.06)  # past the TTL
        answers = await asyncio.gather(*(registry.definitions() for _ in range(50)))
        assert all(a == {} for a in answers)  # the stale ones, at once
        assert store.reads == 2  # one read for the 50 of them
        await asyncio.sleep(0.03)
        assert list(await registry.definitions()) == ["x1"]
        assert store.reads == 2  # fresh again: no read
        store.stored.clear()
        assert await registry.definitions(fresh=True) == {}  # fresh: reads and waits
        assert store.reads == 3
        await asyncio.sleep(0.06)
        await registry.definitions()  # starts a refresh...
        await registry.close()  # ...which the shutdown stops
        assert registry._refreshing is None

    asyncio.run(scenario())
