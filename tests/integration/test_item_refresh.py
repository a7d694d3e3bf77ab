"""The worker's item refresh between retrains, against the real stack.

A worker over an Online Retail slice and a trained model; then new customers buy an
item together with a brand-new one. The worker's timer re-solves the touched items'
factors and publishes them as a new version that keeps the retrain's count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from aisle.stack import Stack
from feature_store.client import open_redis_sync
from feature_store.keys import Keys
from models.online import decode_vector
from models.train import train_once
from tests.integration.conftest import ADMIN_KEY, isolated_settings
from tests.integration.util import current_model, event, eventually, loaded, stack_over_slice, uid

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("refresh"),
                                 item_refresh_interval_s=1.0, item_refresh_min_new_events=20)
    with stack_over_slice(settings) as s:
        yield s


def test_the_worker_refreshes_touched_items_between_retrains(stack: Stack) -> None:
    first = asyncio.run(train_once(stack.settings))
    item = max(first.item_ids, key=lambda i: first.item_index[i] % 97)  # any known item
    assert current_model(stack).version == first.version
    time.sleep(3)  # nothing new since the retrain: no refresh
    assert current_model(stack).version == first.version

    orders = [event("order.placed", {"order_id": uid("o"), "lines": [
        {"item_id": item, "quantity": 2, "unit_price": 3.0},
        {"item_id": "BRAND-NEW", "quantity": 1, "unit_price": 5.0}]}, uid("c"), minutes=n)
        for n in range(30)]
    with httpx.Client(base_url=stack.api_url or "", timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        assert api.post("/v1/events", json=orders).status_code == 202
    deadline = time.monotonic() + 60
    while (art := current_model(stack)) is not None and art.version == first.version:
        assert time.monotonic() < deadline, "no refresh within 60 s"
        time.sleep(0.3)
    assert art is not None
    assert art.stats["refreshed_from"] == first.version
    assert 1 <= art.stats["refreshed_items"] <= len(first.item_ids)
    assert art.stats["events_applied"] == first.stats["events_applied"]  # the retrain's
    assert art.stats["refreshed_at_events"] >= first.stats["events_applied"] + 30
    assert art.item_ids == first.item_ids and art.ref_ts > first.ref_ts
    j = first.item_index[item]
    assert not np.allclose(art.item_factors[j], first.item_factors[j])  # re-solved
    np.testing.assert_array_equal(art.similar_ids, first.similar_ids)  # the retrain's
    with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
        eventually(lambda: loaded(api, art.version))  # the API serves it

    time.sleep(3)  # no new events since the refresh: no second one
    assert current_model(stack).version == art.version


def test_a_published_model_re_folds_every_customer_unless_turned_off(stack: Stack) -> None:
    s = stack.settings
    keys = Keys(s.features.key_prefix, s.features.shards)
    store = open_redis_sync(s)
    try:
        users = sorted(u.decode() for shard in range(keys.shards)
                       for u in store.smembers(keys.users(shard)))
        assert len(users) > 50

        def versions(version: str) -> list[bool]:
            return [decode_vector(store.get(keys.user(u, "vec")) or b"", version) is not None
                    for u in users]

        art = asyncio.run(train_once(s))
        assert all(versions(art.version))  # the training run re-folded everyone
        off = s.model_copy(update={"model": s.model.model_copy(
            update={"refold_customers": False})})
        later = asyncio.run(train_once(off))
        assert not any(versions(later.version))  # left to the API's request-time fold-in
        assert all(versions(art.version))
    finally:
        store.close()
