"""``ExperimentRegistry.assign_now``: the assignment the routes take without waiting
(a returning customer's kept answer is given from it) must be exactly what
``assign`` answers, or None where it cannot tell: definitions never read, or an
experiment on the surface that targets segments."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from serving.experiments import ExperimentRegistry
from streams import events as ev
from tests.integration.util import FoldedStore

pytestmark = pytest.mark.integration
USERS = [f"u{n}" for n in range(300)]


def created(spec: ev.ExperimentSpec) -> ev.ExperimentCreated:
    return ev.ExperimentCreated(event_id=f"x-{uuid.uuid4().hex[:8]}",
                                occurred_at=datetime.now(UTC), payload=spec)


def spec(xid: str, surfaces: list[str], layer: str, **kw: object) -> ev.ExperimentSpec:
    return ev.ExperimentSpec(id=xid, surfaces=surfaces, layer=layer, layer_range=(0, 6000),
                             variants=[ev.Variant(name="a", weight=1),
                                       ev.Variant(name="b", weight=2)],
                             **kw)  # type: ignore[arg-type]


async def _scenario(redis_url: str) -> None:
    folded = FoldedStore(redis_url, "xr")
    client, keys, apply = folded.client, folded.keys, folded.apply

    registry = ExperimentRegistry(client, keys, ttl_s=0.2)
    try:
        # Never read: nothing known, and the first call starts the read.
        assert registry.known() is None
        assert registry.assign_now("u1", "recommendations") is None
        await registry.definitions()
        assert registry.known() == {}
        assert registry.assign_now("u1", "recommendations") == []

        await apply(created(spec("ranking-x", ["recommendations", "related"], "ranking")),
                    created(spec("offers-x", ["offers"], "welcome", segments=["prospect"])))
        await asyncio.sleep(0.25)  # past the TTL: the next call refreshes in the background
        assert registry.assign_now("u1", "recommendations") == []  # still the old ones
        for _ in range(100):  # the background read lands
            if set(registry.known() or {}) == {"ranking-x", "offers-x"}:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the definitions were not refreshed")

        for surface in ("recommendations", "related"):
            now = [registry.assign_now(u, surface) for u in USERS]
            waited = [await registry.assign(u, surface) for u in USERS]
            assert now == waited
            # Both kinds of answer occur: customers in the layer's range and out of it.
            assert any(now) and not all(now)
        # A segment-targeting experiment on the surface: the segment is needed.
        assert registry.assign_now("u1", "offers") is None
        assert await registry.assign("u1", "offers", None) == []
    finally:
        await registry.close()
        await client.aclose()


def test_assign_now_answers_as_assign_or_not_at_all(redis_url: str) -> None:
    asyncio.run(_scenario(redis_url))
