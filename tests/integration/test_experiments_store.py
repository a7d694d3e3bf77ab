"""The A/B opcodes (xexpose, xclick, xview, xconvert) in store.lua and in the memory store agree,
duplicates and redeliveries included."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest

from streams import events as ev
from tests.integration.test_store_contract import T0, _run_both, differences, random_events

pytestmark = pytest.mark.integration


def experiment_events(n: int, seed: int) -> list[ev.AnyEvent]:
    """Customer events interleaved with exposures (two experiments, some answers in both),
    clicks by request id (some unknown), carts and orders inside and outside the window."""
    rng = random.Random(seed)
    base = random_events(n, seed)
    out: list[ev.AnyEvent] = []
    rids: list[tuple[str, str]] = []
    for i, event in enumerate(base):
        out.append(event)
        user = f"u{rng.randrange(30)}"
        t = T0 + timedelta(minutes=i, seconds=30)
        common = {"occurred_at": t, "user_id": user, "source": "web"}
        k = rng.random()
        if k < 0.25:
            rid = f"r{i}"
            for xid in (["x1", "x2"] if rng.random() < 0.3 else [rng.choice(["x1", "x2"])]):
                out.append(ev.ExperimentExposed(
                    event_id=f"x-{rid}-{xid}", payload=ev.Exposure(
                        request_id=rid, experiment=xid, variant=rng.choice(["a", "b"]),
                        surface="recommendations", items=["i1", "i2"]), **common))
            rids.append((rid, user))
        elif k < 0.4 and rids:
            rid, owner = rng.choice(rids) if rng.random() < 0.9 else ("nope", user)
            out.append(ev.ProductViewed(event_id=f"c{i}", payload=ev.ItemRef(
                item_id="i1", request_id=rid), **{**common, "user_id": owner}))
        elif k < 0.45 and rids:  # no request id: a click if an answer showed it lately
            out.append(ev.ProductViewed(event_id=f"w{i}", payload=ev.ItemRef(
                item_id=rng.choice(["i1", "i2", "i3"])), **{**common, "user_id": rids[-1][1]}))
        elif k < 0.5:
            late = t + timedelta(days=rng.choice([0, 0, 10]))
            lines = [ev.OrderLine(item_id="i3", quantity=rng.randrange(1, 4),
                                  unit_price=round(rng.random() * 20, 2))]
            out.append(ev.OrderPlaced(event_id=f"xo{i}", payload=ev.Order(
                order_id=f"xo{i}", lines=lines), **{**common, "occurred_at": late}))
        elif k < 0.55:
            out.append(ev.ExperimentCreated(event_id=f"d{i}", payload=ev.ExperimentSpec(
                id="x1", surfaces=["recommendations"],
                variants=[ev.Variant(name="a", weight=1), ev.Variant(name="b", weight=1)]),
                occurred_at=t))
    return out


@pytest.mark.parametrize("seed", [3, 4])
def test_experiment_opcodes_agree(redis_url: str, seed: int) -> None:
    settings_window = 168 * 3600  # the default; orders 10 days late fall outside it
    assert settings_window < 10 * 86400
    real, fake = asyncio.run(_run_both(redis_url, experiment_events(1500, seed)))
    stats = {k: v for k, v in real.items() if ":x:st:" in k}
    assert stats, "exposures were counted"
    fields = {f.split("|")[-1] for v in stats.values() for f in v}
    assert {"users", "exp", "clk", "conv", "rev", "moved", "cart"} <= fields
    assert any(k.endswith(":xreq") for k in real) and any(k.endswith(":xshown") for k in real)
    assert differences(real, fake) == []
