"""Real data end to end: replay slices of Online Retail and Taobao through Kafka, train,
serve, fold in, filter dislikes, erase — and rebuild the whole state from the log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from aisle.replay import replay_file
from aisle.stack import Stack
from feature_store.dump import dump_state
from models.online import decode_vector
from models.train import train_once
from streams.lag import wait_caught_up
from streams.rebuild import rebuild_from_log
from tests.conftest import ONLINE_RETAIL, TAOBAO
from tests.integration.conftest import ADMIN_KEY, isolated_settings
from tests.integration.util import (
    catalog,
    current_model,
    customers,
    event,
    eventually,
    keys_of,
    loaded,
    uid,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("real"))
    s = Stack.start(settings, workers=1, api=True)
    try:
        asyncio.run(replay_file(s.settings, ONLINE_RETAIL, limit_rows=40_000))
        asyncio.run(replay_file(s.settings, TAOBAO, limit_rows=5_000))
        asyncio.run(wait_caught_up(s.settings, timeout=120))
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def model_version(stack: Stack) -> str:
    return asyncio.run(train_once(stack.settings)).version


def test_related_items_for_a_popular_product(api, stack, model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    body = api.get("/v1/items/85123A/related", params={"limit": 10}).json()
    ids = [it["item_id"] for it in body["items"]]
    assert body["model_version"] == model_version
    assert not body["degraded"]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert "85123A" not in ids
    assert all(it["title"] and it["reason"] for it in body["items"])
    reasons = [it["reason"] for it in body["items"]]
    assert any("bought together with WHITE HANGING HEART T-LIGHT HOLDER" in r for r in reasons), \
        reasons


def test_recommendations_for_real_customers_skip_what_they_cannot_want(
        api, stack, store, model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    k = keys_of(stack)
    art = current_model(stack)
    assert art is not None and art.version == model_version
    assert 0 < art.consumable.sum() < len(art.consumable)
    checked = repeats = 0
    for user in customers(stack, store)[:15]:
        body = api.get(f"/v1/users/{user}/recommendations", params={"limit": 10}).json()
        assert body["model_version"] == model_version
        assert body["strategy"] == "personal"
        ids = [it["item_id"] for it in body["items"]]
        assert len(ids) == len(set(ids)) == 10
        bought = {b.decode() for b in store.hkeys(k.user(user, "bought"))}
        for it in body["items"]:
            if it["item_id"] in bought:  # only what customers buy again may come back:
                rebuys = int(store.hget(k.user(user, "bought"), it["item_id"]))
                assert (art.consumable[art.item_index[it["item_id"]]]  # everyone rebuys it
                        or rebuys >= 2), it  # or this customer does
                repeats += 1
        checked += 1
    assert checked >= 10




def test_fold_in_makes_the_next_request_personal(api, stack, store, model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    user = uid("fresh")
    before = api.get(f"/v1/users/{user}/recommendations").json()
    assert before["strategy"] == "popular"
    views = [event("product.viewed", {"item_id": item}, user, minutes=n, session_id="s")
             for n, item in enumerate(["22423", "22697", "22699"])]
    assert api.post("/v1/events", json=views).status_code == 202
    vec_key = keys_of(stack).user(user, "vec")
    raw = eventually(lambda: store.get(vec_key))
    assert decode_vector(raw, model_version) is not None  # the worker solved it
    after = api.get(f"/v1/users/{user}/recommendations").json()
    assert after["strategy"] == "personal"
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    reasons = " ".join(i["reason"] for i in after["items"])
    assert "because you viewed" in reasons

    # A view from 2011 arrives late (a shop's backfill), then a view of today: the worker
    # decays to the customer's newest event (2024), not to the late event's time, which
    # weighed the 2024 views up by e^100 and could fail the solve.
    late = event("product.viewed", {"item_id": "22423"}, user, minutes=-13 * 365 * 24 * 60)
    assert api.post("/v1/events", json=[late]).status_code == 202
    rfm_key = keys_of(stack).user(user, "rfm")
    eventually(lambda: float(store.hget(rfm_key, "first_seen") or 0) < 1.4e9)
    more = event("product.viewed", {"item_id": "85123A"}, user, minutes=10, session_id="s")
    assert api.post("/v1/events", json=[more]).status_code == 202
    solved = eventually(lambda: (r := store.get(vec_key)) != raw and r)
    vec = decode_vector(solved, model_version)
    assert vec is not None
    assert np.isfinite(vec).all()
    again = api.get(f"/v1/users/{user}/recommendations")
    assert again.status_code == 200 and again.json()["strategy"] == "personal"


def test_a_stated_dislike_filters_everywhere(api, stack, store, model_version) -> None:
    eventually(lambda: loaded(api, model_version))
    user = customers(stack, store)[0]
    first = api.get(f"/v1/users/{user}/recommendations").json()["items"][0]
    related_of = api.get(f"/v1/items/{first['item_id']}/related").json()["items"][0]["item_id"]
    docs = [catalog(first["item_id"], first["title"], minutes=10**6,
                    attributes={"material": "polyester"}),
            event("preference.stated", {"dislikes": ["material:polyester"],
                                        "note": "allergic"}, user, minutes=10**6)]
    assert api.post("/v1/events", json=docs).status_code == 202
    dislikes = keys_of(stack).user(user, "dislikes")
    eventually(lambda: store.hexists(dislikes, "material:polyester"))
    eventually(lambda: first["item_id"] not in [
        i["item_id"] for i in api.get(f"/v1/users/{user}/recommendations").json()["items"]])
    assert related_of  # the item itself is still related elsewhere; only this customer filters


def test_erasure_leaves_no_key_of_the_customer(api, stack, store) -> None:
    user = customers(stack, store)[1]
    erase = event("user.erased", {}, user, minutes=10**6)
    # An engine event type on the public endpoint needs the admin key (anyone could erase).
    refused = api.post("/v1/events", json=erase)
    assert refused.status_code == 401, refused.text
    assert "user.erased" in refused.json()["detail"]
    assert api.post("/v1/events", json=erase, headers={"Authorization": "Bearer nope"}
                    ).status_code == 401
    assert list(store.scan_iter(match=f"{{{stack.settings.features.key_prefix}:*:u:{user}:*"))
    assert api.post("/v1/events", json=erase, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
                    ).status_code == 202
    # Only this stack's keys: other modules' stacks share the Valkey with other prefixes.
    pattern = f"{{{stack.settings.features.key_prefix}:*:u:{user}:*"
    eventually(lambda: not list(store.scan_iter(match=pattern)), timeout=90)
    shard = keys_of(stack).shard_of(user)
    assert not store.sismember(keys_of(stack).users(shard), user)


def test_state_rebuilt_from_the_log_equals_the_live_state(stack) -> None:
    """Runs last: everything above (orders, views, dislikes, erasure) is in the log."""
    asyncio.run(wait_caught_up(stack.settings, timeout=60))
    live = asyncio.run(dump_state(stack.settings))
    result = asyncio.run(rebuild_from_log(stack.settings))
    rebuilt = asyncio.run(dump_state(stack.settings))
    assert result["wiped_keys"] > 1000
    assert len(live) > 1000
    assert rebuilt.keys() == live.keys()
    assert rebuilt == live
